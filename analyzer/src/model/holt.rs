//! Holt's linear exponential smoothing (additive trend, no season) over window means, with the
//! prediction interval of the equivalent state-space model ETS(A,A,N).

use serde::{Deserialize, Serialize};

use super::{Forecast, NoForecast, normal_quantile};

/// A series' level and trend, per window step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holt {
    /// Smoothing of the level, in (0, 1].
    alpha: f64,
    /// Smoothing of the trend (β* in Hyndman's notation: the trend follows the change of level), in [0, 1].
    beta: f64,
    state: Option<State>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    level: f64,
    /// Per step.
    trend: f64,
    /// The latest window's start and its length, the step.
    start_ns: i64,
    step_ns: i64,
    windows: u64,
    /// Sum of squared one-step errors; the first window's is 0 by construction, as in statsmodels'
    /// `initialization_method="known"` with the first value as the initial level and a zero trend.
    squared_errors: f64,
}

/// One error to estimate the variance from.
const NEED: u64 = 2;

impl Holt {
    pub fn new(alpha: f64, beta: f64) -> Self {
        Self { alpha, beta, state: None }
    }

    /// The smoothing of the level and of the trend.
    pub fn params(&self) -> (f64, f64) {
        (self.alpha, self.beta)
    }

    /// Folds in the mean of the window `[start_ns, end_ns)`. The first window sets the level (trend 0)
    /// and the step. A window `k` steps after the latest (k > 1 when windows are missing) is predicted
    /// `k` steps ahead and the trend learns from the change of level per step; a window that is not
    /// after the latest (a replay) changes nothing.
    pub fn observe(&mut self, start_ns: i64, end_ns: i64, mean: f64) {
        let Some(s) = &mut self.state else {
            let step_ns = (end_ns - start_ns).max(1);
            self.state = Some(State { level: mean, trend: 0.0, start_ns, step_ns, windows: 1, squared_errors: 0.0 });
            return;
        };
        if start_ns <= s.start_ns {
            return;
        }
        let steps = ((start_ns - s.start_ns) as f64 / s.step_ns as f64).round().max(1.0);
        let predicted = s.level + steps * s.trend;
        let level = self.alpha * mean + (1.0 - self.alpha) * predicted;
        s.trend = self.beta * (level - s.level) / steps + (1.0 - self.beta) * s.trend;
        s.level = level;
        s.start_ns = start_ns;
        s.windows += 1;
        s.squared_errors += (mean - predicted).powi(2);
    }

    /// The mean of the window `h = ⌈horizon / step⌉` (at least 1) steps after the latest, at that
    /// window's midpoint, with the `confidence` interval from ETS(A,A,N)'s forecast variance
    /// σ²·[1 + (h−1)(α² + αβh + β²h(2h−1)/6)] (β = α·β*, σ² the mean squared one-step error).
    pub fn forecast(&self, horizon_ns: i64, confidence: f64) -> Result<Forecast, NoForecast> {
        let z = normal_quantile(confidence)?;
        let Some(s) = self.state.as_ref().filter(|s| s.windows >= NEED) else {
            let have = self.state.as_ref().map_or(0, |s| s.windows);
            return Err(NoForecast::TooFewWindows { have, need: NEED });
        };
        let h = (horizon_ns.max(0) as f64 / s.step_ns as f64).ceil().max(1.0);
        let value = s.level + h * s.trend;
        let (a, b) = (self.alpha, self.alpha * self.beta);
        let variance = s.squared_errors / s.windows as f64
            * (1.0 + (h - 1.0) * (a * a + a * b * h + b * b * h * (2.0 * h - 1.0) / 6.0));
        let spread = z * variance.sqrt();
        let at_ns = s.start_ns.saturating_add((h as i64).saturating_mul(s.step_ns)).saturating_add(s.step_ns / 2);
        Ok(Forecast {
            at_ns,
            value,
            lower: value - spread,
            upper: value + spread,
            slope_per_second: s.trend / (s.step_ns as f64 / 1e9),
            windows: s.windows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const Y: [f64; 10] = [10.0, 12.0, 11.5, 13.0, 15.0, 14.2, 16.8, 18.1, 17.5, 19.9];

    fn smoothed(values: &[f64]) -> Holt {
        let mut model = Holt::new(0.5, 0.3);
        for (i, y) in values.iter().enumerate() {
            model.observe(i as i64 * 10 * S, (i as i64 + 1) * 10 * S, *y);
        }
        model
    }

    #[test]
    fn matches_statsmodels() {
        // Reference, computed with statsmodels 0.15.0 (analyzer/reference/models.py, `holt`):
        //   ETSModel(y, error="add", trend="add", initialization_method="known", initial_level=y[0],
        //            initial_trend=0).smooth([0.5, 0.5 * 0.3]).get_prediction(10, 12).summary_frame(0.05)
        // (Holt(y, ...).fit(0.5, 0.3) gives the same means.)
        let model = smoothed(&Y);
        for (h, (mean, lower, upper)) in HOLT.into_iter().enumerate() {
            let f = model.forecast((h as i64 + 1) * 10 * S, 0.95).unwrap();
            assert!((f.value - mean).abs() < 1e-9, "h {}: {} != {mean}", h + 1, f.value);
            assert!((f.lower - lower).abs() < 1e-9, "h {}: {} != {lower}", h + 1, f.lower);
            assert!((f.upper - upper).abs() < 1e-9, "h {}: {} != {upper}", h + 1, f.upper);
            assert_eq!(f.at_ns, (10 + h as i64) * 10 * S + 5 * S, "the midpoint of the window forecast");
        }
        let f = model.forecast(0, 0.95).unwrap();
        assert!((f.value - HOLT[0].0).abs() < 1e-9, "a horizon shorter than a step forecasts the next window");
        assert!((f.slope_per_second - TREND / 10.0).abs() < 1e-12);
        assert_eq!(f.windows, 10);
    }
    const HOLT: [(f64, f64, f64); 3] = [
        (20.577783147023435, 18.08128299771804, 23.07428329632883),
        (21.670979473968746, 18.693438586579802, 24.64852036135769),
        (22.764175800914057, 19.178850424719965, 26.34950117710815),
    ];
    const TREND: f64 = 1.093196326945312;

    #[test]
    fn replays_change_nothing_and_gaps_are_stepped_over() {
        let mut model = smoothed(&Y);
        let before = model.clone();
        model.observe(90 * S, 100 * S, 1000.0);
        model.observe(0, 10 * S, -1000.0);
        assert_eq!(model, before);
        // Two windows missing: the next is predicted three steps ahead, level 19.4846 + 3·1.0932.
        model.observe(120 * S, 130 * S, 22.764176);
        let f = model.forecast(0, 0.95).unwrap();
        assert_eq!(f.at_ns, 135 * S);
        assert!((f.value - (22.764176 + TREND)).abs() < 1e-5, "{}", f.value);
    }

    #[test]
    fn one_window_is_not_enough() {
        assert_eq!(smoothed(&[]).forecast(S, 0.9), Err(NoForecast::TooFewWindows { have: 0, need: 2 }));
        assert_eq!(smoothed(&[1.0]).forecast(S, 0.9), Err(NoForecast::TooFewWindows { have: 1, need: 2 }));
        assert_eq!(smoothed(&Y).forecast(S, 0.0), Err(NoForecast::Confidence(0.0)));
    }
}
