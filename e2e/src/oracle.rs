//! The end-to-end tests' data and its oracle: points whose aggregates are computed here directly,
//! independently of the processor, so a test can compare every window exactly.

use std::collections::BTreeMap;

use plumbing::kafka::TopicSettings;
use proto::v1::{Point, Series, WindowStats};

pub const S: i64 = 1_000_000_000;
pub const WINDOW: i64 = 10 * S;
pub const LATENESS: i64 = 5 * S;
/// The threshold of the test's alert rule.
pub const HOT: f64 = 28.0;

/// The topics of one test's pipeline.
#[derive(Debug, Clone)]
pub struct Topics {
    pub points: TopicSettings,
    pub aggregates: TopicSettings,
    pub alerts: TopicSettings,
    pub deadletter: TopicSettings,
}

impl Topics {
    /// Unique topics: points and aggregates with `partitions` each, alerts with one.
    pub fn unique(partitions: i32) -> Self {
        Self {
            points: crate::topic("e2e-points", partitions),
            aggregates: crate::topic("e2e-aggregates", partitions),
            alerts: crate::topic("e2e-alerts", 1),
            deadletter: crate::topic("e2e-deadletter", 1),
        }
    }
}

pub fn series(metric: &str, tags: &[(&str, &str)]) -> Series {
    Series { metric: metric.into(), tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

pub fn point(s: &Series, ts: i64, value: f64) -> Point {
    Point { metric: s.metric.clone(), tags: s.tags.clone(), timestamp_ns: ts, value }
}

/// The test's data: three series, one point every 2 s from 0 to 48 s after `base`, sent in time order
/// across series except for points held back within the lateness, one point beyond it, and a point at
/// 60 s per series that moves every partition's watermark to 55 s, closing the windows up to 50 s.
#[derive(Debug, Clone)]
pub struct Data {
    pub sent: Vec<Point>,
    pub late: Point,
}

pub fn data(base: i64, a: &Series, b: &Series, c: &Series) -> Data {
    let value_a = |t: i64| 20.0 + 0.2 * t as f64;
    let value_b = |t: i64| 30.0 - 0.1 * t as f64 + if t % 4 == 0 { 1.0 } else { 0.0 };
    let value_c = |t: i64| (t % 7) as f64;
    let mut sent = Vec::new();
    let mut held: Vec<Point> = Vec::new();
    for t in (0..50).step_by(2) {
        let ts = base + t * S;
        // Out of order within the lateness: a's points at 8 s and 26 s are sent 4 s later than their time.
        if t == 8 || t == 26 {
            held.push(point(a, ts, value_a(t)));
        } else {
            sent.push(point(a, ts, value_a(t)));
        }
        sent.push(point(b, ts, value_b(t)));
        sent.push(point(c, ts, value_c(t)));
        if t == 12 || t == 30 {
            sent.append(&mut held);
        }
    }
    // Beyond the lateness: b has reached 20 s, so its watermark is at least 15 s and the window [0, 10) of
    // every partition b can be in has closed.
    let late = point(b, base + 3 * S, 1000.0);
    let position = sent.iter().position(|p| p.metric == b.metric && p.tags == b.tags && p.timestamp_ns == base + 20 * S);
    sent.insert(position.expect("b at 20 s") + 1, late.clone());
    for s in [a, b, c] {
        sent.push(point(s, base + 60 * S, 0.0));
    }
    Data { sent, late }
}

/// The oracle: aggregates computed directly from the points, in send order, leaving out the late point and
/// windows that have not closed (start >= 50 s).
pub fn expected(base: i64, data: &Data) -> BTreeMap<String, Vec<WindowStats>> {
    let mut groups: BTreeMap<(String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for p in data.sent.iter().filter(|p| *p != &data.late) {
        let start = base + (p.timestamp_ns - base) / WINDOW * WINDOW;
        if start < base + 50 * S {
            groups.entry((p.series_key(), start)).or_default().push((p.timestamp_ns, p.value));
        }
    }
    let mut out: BTreeMap<String, Vec<WindowStats>> = BTreeMap::new();
    for ((key, start), points) in groups {
        let n = points.len() as f64;
        let sum = points.iter().fold(0.0, |acc, (_, v)| acc + v);
        // Textbook least squares, x in seconds since the window start.
        let xs: Vec<f64> = points.iter().map(|(t, _)| (t - start) as f64 / 1e9).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / n, sum / n);
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let sxy: f64 = xs.iter().zip(&points).map(|(x, (_, v))| (x - mx) * (v - my)).sum();
        let svv: f64 = points.iter().map(|(_, v)| (v - my) * (v - my)).sum();
        // First and last by event time; among equal times the first sent is first and the last sent last.
        let first = points.iter().fold(points[0], |a, p| if p.0 < a.0 { *p } else { a });
        let last = points.iter().fold(points[0], |a, p| if p.0 >= a.0 { *p } else { a });
        let elapsed = (last.0 - first.0) as f64 / 1e9;
        out.entry(key).or_default().push(WindowStats {
            start_ns: start,
            end_ns: start + WINDOW,
            count: points.len() as u64,
            sum,
            mean: sum / n,
            min: points.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min),
            max: points.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max),
            gradient_per_second: (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx),
            first: first.1,
            last: last.1,
            first_ns: first.0,
            last_ns: last.0,
            stddev: (points.len() >= 2).then(|| (svv / (n - 1.0)).sqrt()),
            rate_per_second: (elapsed > 0.0).then(|| (last.1 - first.1) / elapsed),
            ..WindowStats::default()
        });
    }
    out
}

/// Asserts `got` equals `want` exactly, but for the gradient, which two algorithms agree on to rounding.
pub fn assert_windows(key: &str, got: &[WindowStats], want: &[WindowStats]) {
    assert_eq!(got.len(), want.len(), "{key}: window count");
    for (g, w) in got.iter().zip(want) {
        let ctx = format!("{key} window at {}", w.start_ns);
        assert_eq!((g.start_ns, g.end_ns, g.count), (w.start_ns, w.end_ns, w.count), "{ctx}");
        assert_eq!((g.sum, g.mean, g.min, g.max), (w.sum, w.mean, w.min, w.max), "{ctx}");
        assert_eq!((g.first, g.first_ns, g.last, g.last_ns), (w.first, w.first_ns, w.last, w.last_ns), "{ctx}");
        // Different algorithms (streaming moments versus two passes) agree to rounding only.
        for (what, g, w) in [
            ("gradient", g.gradient_per_second, w.gradient_per_second),
            ("stddev", g.stddev, w.stddev),
            ("rate", g.rate_per_second, w.rate_per_second),
        ] {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{ctx}: {what} {g} vs {w}"),
                (g, w) => assert_eq!(g, w, "{ctx}: {what}"),
            }
        }
        // Every reported quantile lies within the sketch's accuracy of an exact one: between the
        // smallest and the largest value, within the stated relative error of the extremes.
        assert!(!g.quantiles.is_empty() && !g.sketch.is_empty(), "{ctx}: quantiles and sketch");
        for q in &g.quantiles {
            let slack = g.sketch_relative_accuracy * w.min.abs().max(w.max.abs());
            assert!(q.value >= w.min - slack && q.value <= w.max + slack, "{ctx}: q{} = {}", q.q, q.value);
        }
    }
}

/// A value spread over four orders of magnitude, so that percentiles differ from the mean.
pub fn spread_value(series: u32, second: i64) -> f64 {
    let mut h = (u64::from(series) << 32) ^ second as u64 ^ 0x9e37_79b9_7f4a_7c15;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let unit = (h % 1_000_000) as f64 / 1_000_000.0;
    0.5 * 10f64.powf(4.0 * unit)
}

/// The exact `q` quantile of `values` at rank `q * (n - 1)`, rounded down (DDSketch's rank).
pub fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}
