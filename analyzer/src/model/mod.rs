//! Per-series models, each updated once per closed window with constant-size state: trend forecasts
//! (least squares over a sliding window, Holt's linear smoothing) with prediction intervals, and anomaly
//! scores in [0, 1] (EWMA z-score, median/MAD, seasonal baseline). Pure: plain data in, plain data out,
//! no IO, so every formula is unit-tested against values computed independently.

mod anomaly;
mod holt;
mod regression;

pub use anomaly::{Detector, DetectorSpec, Ewma, Mad, Seasonal};
pub use holt::Holt;
pub use regression::Regression;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

/// A forecast: the expected value at `at_ns`, and the interval that holds the value there with the
/// requested probability (if the model's assumptions hold).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub at_ns: i64,
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
    /// The fitted trend, per second.
    pub slope_per_second: f64,
    /// How many windows the model has seen (Holt) or holds (regression).
    pub windows: u64,
}

/// Why a model gives no forecast.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum NoForecast {
    #[error("the series has {have} window(s); this model needs at least {need}")]
    TooFewWindows { have: u64, need: u64 },
    #[error("confidence {0} is not between 0 and 1 (exclusive)")]
    Confidence(f64),
}

/// The anomaly score of a standard score `z`: the probability that a normal variable lies closer to
/// its mean than `z` standard deviations, `erf(|z| / √2)`. 0 at the mean, 0.683 at one standard
/// deviation, 0.9973 at three, 1 for an infinite `z` (a change of a series that never varied).
pub fn score(z: f64) -> f64 {
    if z.is_nan() { 0.0 } else { statrs::function::erf::erf(z.abs() / std::f64::consts::SQRT_2) }
}

/// The two-sided normal quantile for `confidence`: 1.96 for 0.95.
fn normal_quantile(confidence: f64) -> Result<f64, NoForecast> {
    check_confidence(confidence)?;
    Ok(Normal::standard().inverse_cdf(0.5 + confidence / 2.0))
}

fn check_confidence(confidence: f64) -> Result<(), NoForecast> {
    if confidence > 0.0 && confidence < 1.0 { Ok(()) } else { Err(NoForecast::Confidence(confidence)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_normal_distribution() {
        // scipy.special.erf(numpy.array([0, 1, 2, 3]) / numpy.sqrt(2)) with scipy 1.17.1:
        // [0.0, 0.6826894921370859, 0.9544997361036416, 0.9973002039367398]; statrs' erf agrees to 3e-11.
        for (z, want) in [(0.0, 0.0), (1.0, 0.6826894921370859), (-2.0, 0.9544997361036416), (3.0, 0.9973002039367398)] {
            assert!((score(z) - want).abs() < 1e-10, "z {z}: {} != {want}", score(z));
        }
        assert_eq!(score(f64::INFINITY), 1.0);
        assert_eq!(score(f64::NAN), 0.0);
    }

    #[test]
    fn confidence_is_a_probability() {
        assert!((normal_quantile(0.95).unwrap() - 1.959963984540054).abs() < 1e-9);
        assert_eq!(normal_quantile(1.0), Err(NoForecast::Confidence(1.0)));
        assert_eq!(normal_quantile(0.0), Err(NoForecast::Confidence(0.0)));
        assert!(normal_quantile(f64::NAN).is_err());
    }
}
