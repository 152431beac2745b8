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

/// The anomaly score of a standard score `z`: `1 − p^(1/10)`, where `p = erfc(|z| / √2)` is the
/// probability that a normal variable lies at least `|z|` standard deviations from its mean. A log
/// scale of that tail probability: 0 at the mean, 0.45 at three standard deviations (p = 0.0027), 0.9
/// at p = 10⁻¹⁰ (6.5), 0.99 at p = 10⁻²⁰ (9.3), and 1 only where p underflows (beyond 38) or for an
/// infinite `z` (a change of a series that never varied). Unlike `1 − p` itself, which is 1 in
/// floating point from 8.3 standard deviations on, it keeps strong outliers apart, so a threshold (an
/// alert rule's, NAB's sweep) can separate them.
pub fn score(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    // libm's erfc (musl's) is accurate to an ulp; statrs' to about 1e-11, which is visible here.
    let tail = libm::erfc(z.abs() / std::f64::consts::SQRT_2);
    1.0 - tail.powf(0.1)
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
    fn scores_are_a_log_scale_of_the_normal_tail() {
        // 1 - scipy.special.erfc(numpy.array([0, 1, 3, 8.3, 20]) / numpy.sqrt(2)) ** 0.1 with scipy 1.17.1
        // (analyzer/reference/models.py, `scores`).
        for (z, want) in SCORES {
            let got = score(z);
            assert!((got - want).abs() <= 1e-12 * want.max(1e-3), "z {z}: {got} != {want}");
            assert_eq!(score(-z), got);
        }
        assert_eq!(score(f64::INFINITY), 1.0);
        assert_eq!(score(f64::NAN), 0.0);
        assert!(score(8.3) < score(8.4) && score(20.0) < score(21.0), "strong outliers stay apart");
    }

    const SCORES: [(f64, f64); 5] = [(0.0, 0.0), (1.0, 0.10844437291346543), (3.0, 0.44648028246309857), (8.3, 0.974779724492024), (20.0, 0.9999999985068843)];

    #[test]
    fn confidence_is_a_probability() {
        assert!((normal_quantile(0.95).unwrap() - 1.959963984540054).abs() < 1e-9);
        assert_eq!(normal_quantile(1.0), Err(NoForecast::Confidence(1.0)));
        assert_eq!(normal_quantile(0.0), Err(NoForecast::Confidence(0.0)));
        assert!(normal_quantile(f64::NAN).is_err());
    }
}
