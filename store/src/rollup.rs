//! Merging windows into coarser ones, and reading one statistic of a window: pure, no IO.
//!
//! A window carries enough to merge exactly (count, sum, extremes, first and last), by the parallel
//! formulas of Chan et al. (the moments behind the standard deviation and the gradient), or within
//! the sketch's relative accuracy (quantiles, from the merged DDSketch). A step of a `Range` and a
//! downsampled tier are both such merges.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use proto::v1::{Moments, Quantile, Statistic, WindowStats};
use sketches_ddsketch::DDSketch;

use crate::segment::{AggregateBuilders, AggregateColumns, SegmentError};
use crate::wire::{AggregateView, WindowView};

/// Merges `windows` (of one series, in start order, at least one) into one window `[start_ns, end_ns)`.
/// Its reported quantiles are those the first window reports, recomputed from the merged sketch.
pub fn merge(windows: &[&WindowStats], start_ns: i64, end_ns: i64) -> WindowStats {
    let mut merged = Merged::default();
    for w in windows {
        merged.add(&WindowView::without_quantiles(w));
    }
    merged.finish(start_ns, end_ns, windows.first().into_iter().flat_map(|w| w.quantiles.iter().map(|q| q.q)))
}

/// Windows being merged.
#[derive(Default)]
struct Merged {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: (i64, f64),
    last: (i64, f64),
    moments: Moments,
    sketch: Option<DDSketch>,
    relative_accuracy: f64,
}

impl Merged {
    fn add(&mut self, w: &WindowView<'_>) {
        if w.count == 0 {
            return;
        }
        let m = w.moments;
        if self.count == 0 {
            *self = Self {
                count: w.count,
                sum: w.sum,
                min: w.min,
                max: w.max,
                first: (w.first_ns, w.first),
                last: (w.last_ns, w.last),
                moments: m,
                sketch: DDSketch::from_java_bytes(w.sketch).ok(),
                relative_accuracy: w.sketch_relative_accuracy,
            };
            return;
        }
        let (na, nb) = (self.count as f64, w.count as f64);
        let n = na + nb;
        let a = &mut self.moments;
        // Chan et al.'s pairwise update, after moving the other's time mean onto this origin.
        let dt = m.mean_t + (m.origin_ns - a.origin_ns) as f64 / 1e9 - a.mean_t;
        let dv = m.mean_v - a.mean_v;
        a.m2_t += m.m2_t + dt * dt * na * nb / n;
        a.m2_v += m.m2_v + dv * dv * na * nb / n;
        a.c_tv += m.c_tv + dt * dv * na * nb / n;
        a.mean_t += dt * nb / n;
        a.mean_v += dv * nb / n;
        self.count += w.count;
        self.sum += w.sum;
        self.min = self.min.min(w.min);
        self.max = self.max.max(w.max);
        // Among equal times the earlier window's first is first, the later window's last is last.
        if w.first_ns < self.first.0 {
            self.first = (w.first_ns, w.first);
        }
        if w.last_ns >= self.last.0 {
            self.last = (w.last_ns, w.last);
        }
        self.relative_accuracy = self.relative_accuracy.max(w.sketch_relative_accuracy);
        let other = DDSketch::from_java_bytes(w.sketch).ok();
        match (&mut self.sketch, other) {
            (Some(sketch), Some(other)) => {
                if sketch.merge(&other).is_err() {
                    // Sketches of two configurations (a processor reconfigured between the windows):
                    // the other's values are folded in as its quantiles at evenly spaced ranks, each
                    // within the coarser of the two accuracies.
                    let n = other.count();
                    for i in 0..n {
                        if let Ok(Some(v)) = other.quantile((i as f64 + 0.5) / n as f64) {
                            sketch.add(v);
                        }
                    }
                }
            }
            // A window without a readable sketch makes the merged quantiles unknown.
            _ => self.sketch = None,
        }
    }

    /// The merged window, reporting the quantiles `report`.
    fn finish(self, start_ns: i64, end_ns: i64, report: impl Iterator<Item = f64>) -> WindowStats {
        let n = self.count as f64;
        let m = self.moments;
        let elapsed = (self.last.0 - self.first.0) as f64 / 1e9;
        let quantiles =
            report.filter_map(|q| quantile_of(self.sketch.as_ref(), q, self.min, self.max).map(|value| Quantile { q, value })).collect();
        WindowStats {
            start_ns,
            end_ns,
            count: self.count,
            sum: self.sum,
            mean: self.sum / n,
            min: self.min,
            max: self.max,
            gradient_per_second: (self.count >= 2 && m.m2_t > 0.0).then(|| m.c_tv / m.m2_t),
            first: self.first.1,
            last: self.last.1,
            first_ns: self.first.0,
            last_ns: self.last.0,
            stddev: (self.count >= 2).then(|| (m.m2_v.max(0.0) / (n - 1.0)).sqrt()),
            rate_per_second: (elapsed > 0.0).then(|| (self.last.1 - self.first.1) / elapsed),
            quantiles,
            sketch: self.sketch.map(|s| s.to_java_bytes()).unwrap_or_default(),
            sketch_relative_accuracy: self.relative_accuracy,
            moments: Some(m),
        }
    }
}

/// The `q` quantile of `sketch`, clamped to the exact extremes (still within the accuracy, and exact
/// when every value is equal).
fn quantile_of(sketch: Option<&DDSketch>, q: f64, min: f64, max: f64) -> Option<f64> {
    sketch?.quantile(q).ok().flatten().map(|v| v.clamp(min, max))
}

/// The windows of one series (in start order) merged per step of `step_ns` counted from the epoch.
pub fn by_step(windows: &[WindowStats], step_ns: i64) -> Vec<WindowStats> {
    let mut out = Vec::new();
    let mut run: Vec<&WindowStats> = Vec::new();
    let mut bucket = None;
    let finish = |run: &[&WindowStats], b: i64| match run {
        // A tier's whole row of this very step is its own merge: no need to decode its sketch.
        [one] if one.start_ns == b * step_ns && one.end_ns == (b + 1) * step_ns => (*one).clone(),
        _ => merge(run, b * step_ns, (b + 1) * step_ns),
    };
    for w in windows {
        let b = w.start_ns.div_euclid(step_ns);
        if bucket != Some(b) {
            if let Some(done) = bucket.filter(|_| !run.is_empty()) {
                out.push(finish(&run, done));
            }
            run.clear();
            bucket = Some(b);
        }
        run.push(w);
    }
    if let Some(done) = bucket.filter(|_| !run.is_empty()) {
        out.push(finish(&run, done));
    }
    out
}

/// What the rows of one (series, window start) are to a roll-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Raw windows: several are copies of one window (a re-delivery), and the last (the highest offset)
    /// counts.
    Windows,
    /// A tier's rows: several are parts of one step (rolled up by different flushes' segments), and
    /// every one counts.
    Parts,
}

/// `batch` (of the aggregates table) rolled up into steps of `step_ns` counted from the epoch: one row
/// per series and step, merging every row whose window starts in it. Each row keeps the partition of
/// the first and the highest offset it merged. Ordered by series key, then step.
///
/// Columnar: rows are read in place and grouped by index, so what is allocated per row is an index; a
/// merge decodes the sketches it merges.
pub fn roll_up(batch: &RecordBatch, step_ns: i64, rows: Rows) -> Result<RecordBatch, SegmentError> {
    let columns = AggregateColumns::of(batch)?;
    let mut by_series: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, key) in columns.series()?.iter().enumerate() {
        by_series.entry(key.unwrap_or_default()).or_default().push(i as u32);
    }
    let mut by_series: Vec<(&str, Vec<u32>)> = by_series.into_iter().collect();
    by_series.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let start = |i: &u32| columns.start_ns(*i as usize);
    let mut out = AggregateBuilders::new();
    let mut tags = Vec::new();
    for (_, mut indices) in by_series {
        indices.sort_unstable_by_key(|&i| (start(&i), columns.offset(i as usize)));
        if rows == Rows::Windows {
            // Of the copies of a window (now adjacent, by offset), the last.
            indices.reverse();
            indices.dedup_by_key(|i| start(i));
            indices.reverse();
        }
        for run in indices.chunk_by(|a, b| start(a).div_euclid(step_ns) == start(b).div_euclid(step_ns)) {
            let first = run[0] as usize;
            let bucket = columns.start_ns(first).div_euclid(step_ns);
            let (start_ns, end_ns) = (bucket * step_ns, (bucket + 1) * step_ns);
            let offset = run.iter().map(|&i| columns.offset(i as usize)).max().unwrap_or_else(|| columns.offset(first));
            let only = columns.window(first);
            let merged;
            let window = match run {
                // A tier's whole row of this very step is its own merge: no need to decode its sketch.
                [_] if only.start_ns == start_ns && only.end_ns == end_ns => WindowView { quantiles: columns.quantiles(first).collect(), ..only },
                _ => {
                    let mut merging = Merged::default();
                    for &i in run {
                        merging.add(&columns.window(i as usize));
                    }
                    merged = merging.finish(start_ns, end_ns, columns.quantiles(first).map(|(q, _)| q));
                    WindowView { quantiles: merged.quantiles.iter().map(|q| (q.q, q.value)).collect(), ..WindowView::without_quantiles(&merged) }
                }
            };
            tags.extend(columns.tags(first));
            let view = AggregateView { metric: columns.metric(first), tags, window };
            out.append(&view, columns.partition(first), offset);
            tags = crate::wire::reuse(view.tags);
        }
    }
    out.finish()
}

/// The `statistic` of `w` (`quantile` for [`Statistic::Quantile`]); `None` where it is undefined.
pub fn statistic(w: &WindowStats, statistic: Statistic, quantile: f64) -> Option<f64> {
    match statistic {
        Statistic::Unspecified => None,
        Statistic::Count => Some(w.count as f64),
        Statistic::Sum => Some(w.sum),
        Statistic::Mean => Some(w.mean),
        Statistic::Min => Some(w.min),
        Statistic::Max => Some(w.max),
        Statistic::Stddev => w.stddev,
        Statistic::Gradient => w.gradient_per_second,
        Statistic::First => Some(w.first),
        Statistic::Last => Some(w.last),
        Statistic::Quantile => {
            // A reported quantile is exactly what the sketch gives; any other is read from the sketch.
            w.quantiles.iter().find(|q| q.q == quantile).map(|q| q.value).or_else(|| {
                let sketch = DDSketch::from_java_bytes(&w.sketch).ok();
                quantile_of(sketch.as_ref(), quantile, w.min, w.max)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use sketches_ddsketch::Config;

    use super::*;
    use crate::segment::{Located, aggregates_to_batch, batch_to_aggregates};

    const S: i64 = 1_000_000_000;

    /// A window computed directly from its points, as the processor reports it.
    fn window(points: &[(i64, f64)], start_ns: i64, end_ns: i64) -> WindowStats {
        let n = points.len() as f64;
        let origin = start_ns;
        let ts: Vec<f64> = points.iter().map(|p| (p.0 - origin) as f64 / 1e9).collect();
        let mean_t = ts.iter().sum::<f64>() / n;
        let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
        let m2_t: f64 = ts.iter().map(|t| (t - mean_t).powi(2)).sum();
        let m2_v: f64 = points.iter().map(|p| (p.1 - mean_v).powi(2)).sum();
        let c_tv: f64 = ts.iter().zip(points).map(|(t, p)| (t - mean_t) * (p.1 - mean_v)).sum();
        let mut sketch = DDSketch::new(Config::new(0.01, 2048, 1e-9));
        points.iter().for_each(|p| sketch.add(p.1));
        let first = points.iter().min_by_key(|p| p.0).copied().unwrap();
        let last = points.iter().rev().max_by_key(|p| p.0).copied().unwrap();
        WindowStats {
            start_ns,
            end_ns,
            count: points.len() as u64,
            sum: points.iter().map(|p| p.1).sum(),
            mean: mean_v,
            min: points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            max: points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
            gradient_per_second: (m2_t > 0.0).then(|| c_tv / m2_t),
            first: first.1,
            last: last.1,
            first_ns: first.0,
            last_ns: last.0,
            stddev: (points.len() >= 2).then(|| (m2_v / (n - 1.0)).sqrt()),
            rate_per_second: None,
            quantiles: vec![Quantile { q: 0.5, value: 0.0 }],
            sketch: sketch.to_java_bytes(),
            sketch_relative_accuracy: 0.01,
            moments: Some(Moments { origin_ns: origin, mean_t, mean_v, m2_t, m2_v, c_tv }),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    /// The exact `q` quantile of `values` by the nearest rank (DDSketch's definition: rank q * (n - 1)).
    fn exact_quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn merged_windows_equal_one_window_of_all_their_points() {
        // 60 ten-second windows of a noisy rising line, merged by the minute.
        let points: Vec<(i64, f64)> = (0..600).map(|i| (i * S + (i % 7) * 1000, 100.0 + 0.5 * i as f64 + ((i * 37) % 11) as f64)).collect();
        let windows: Vec<WindowStats> =
            points.chunks(10).map(|c| window(c, c[0].0 / (10 * S) * 10 * S, c[0].0 / (10 * S) * 10 * S + 10 * S)).collect();
        let minutes = by_step(&windows, 60 * S);
        assert_eq!(minutes.len(), 10);
        for (k, got) in minutes.iter().enumerate() {
            let k = k as i64;
            let want = window(&points[(k * 60) as usize..((k + 1) * 60) as usize], k * 60 * S, (k + 1) * 60 * S);
            assert_eq!((got.start_ns, got.end_ns, got.count), (want.start_ns, want.end_ns, want.count));
            assert_eq!((got.min, got.max, got.first, got.last, got.first_ns, got.last_ns), (want.min, want.max, want.first, want.last, want.first_ns, want.last_ns));
            for (a, b) in [(got.sum, want.sum), (got.mean, want.mean), (got.stddev.unwrap(), want.stddev.unwrap()), (got.gradient_per_second.unwrap(), want.gradient_per_second.unwrap())] {
                assert!(close(a, b), "minute {k}: {a} vs {b}");
            }
            let values: Vec<f64> = points[(k * 60) as usize..((k + 1) * 60) as usize].iter().map(|p| p.1).collect();
            for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
                let exact = exact_quantile(&values, q);
                let estimate = statistic(got, Statistic::Quantile, q).unwrap();
                assert!((estimate - exact).abs() <= 0.01 * exact.abs() + 1e-12, "minute {k} q{q}: {estimate} vs {exact}");
            }
            assert_eq!(got.quantiles.len(), 1, "the first window's reported quantiles, recomputed");
        }
    }

    /// `rows` rolled up, through their columns.
    fn rolled(rows: &[Located], step_ns: i64, kind: Rows) -> Vec<Located> {
        batch_to_aggregates(&roll_up(&aggregates_to_batch(rows).unwrap(), step_ns, kind).unwrap()).unwrap()
    }

    #[test]
    fn rolling_up_in_parts_equals_rolling_up_at_once_and_counts_a_redelivery_once() {
        use proto::v1::{Aggregate, Series};

        let located = |offset: i64, host: &str, w: WindowStats| Located {
            partition: 1,
            offset,
            aggregate: Aggregate { series: Some(Series { metric: "m".into(), tags: [("host".to_owned(), host.to_owned())].into() }), window: Some(w) },
        };
        // Two series, twelve ten-second windows each (two minutes), the third window delivered twice.
        let mut rows = Vec::new();
        let mut offset = 0;
        for k in 0..12i64 {
            for host in ["a", "b"] {
                let points: Vec<(i64, f64)> = (0..10).map(|s| (k * 10 * S + s * S, (k * 10 + s) as f64 * if host == "a" { 1.0 } else { 3.0 })).collect();
                rows.push(located(offset, host, window(&points, k * 10 * S, (k + 1) * 10 * S)));
                offset += 1;
            }
            if k == 2 {
                let again = rows[4].clone();
                rows.push(Located { offset, ..again });
                offset += 1;
            }
        }
        let once = rolled(&rows, 60 * S, Rows::Windows);
        assert_eq!(once.len(), 4, "two series, two minutes");
        let counts: Vec<(String, i64, u64)> =
            once.iter().map(|r| (r.aggregate.series.as_ref().unwrap().key(), r.aggregate.window.as_ref().unwrap().start_ns, r.aggregate.window.as_ref().unwrap().count)).collect();
        assert_eq!(
            counts,
            vec![
                (r#"m{host="a"}"#.into(), 0, 60),
                (r#"m{host="a"}"#.into(), 60 * S, 60),
                (r#"m{host="b"}"#.into(), 0, 60),
                (r#"m{host="b"}"#.into(), 60 * S, 60),
            ],
            "the re-delivered window counts once"
        );
        // Each series' rows are its windows merged by the minute, as a `Range` merges them; each keeps
        // the highest offset it merged.
        for host in ["a", "b"] {
            let of_host = |r: &&Located| r.aggregate.series.as_ref().unwrap().tags["host"] == host;
            let mut windows: Vec<WindowStats> = rows.iter().filter(of_host).map(|r| r.aggregate.window.clone().unwrap()).collect();
            windows.dedup_by_key(|w| w.start_ns);
            let got: Vec<&Located> = once.iter().filter(of_host).collect();
            assert_eq!(got.iter().map(|r| r.aggregate.window.clone().unwrap()).collect::<Vec<_>>(), by_step(&windows, 60 * S));
            let last_offsets: Vec<i64> = (0..2).map(|m| rows.iter().filter(of_host).filter(|r| r.aggregate.window.as_ref().unwrap().start_ns / (60 * S) == m).map(|r| r.offset).max().unwrap()).collect();
            assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), last_offsets);
        }
        // Rolled up in two parts (as two flushes' segments), then those partial rows rolled up again.
        let (left, right) = rows.split_at(9);
        let mut parts = rolled(left, 60 * S, Rows::Windows);
        parts.extend(rolled(right, 60 * S, Rows::Windows));
        assert!(parts.len() > 4, "a minute is split across the parts");
        let merged = rolled(&parts, 60 * S, Rows::Parts);
        for (a, b) in merged.iter().zip(&once) {
            let (a, b) = (a.aggregate.window.as_ref().unwrap(), b.aggregate.window.as_ref().unwrap());
            assert_eq!((a.start_ns, a.count, a.min, a.max, a.first, a.last), (b.start_ns, b.count, b.min, b.max, b.first, b.last));
            assert!(close(a.sum, b.sum) && close(a.stddev.unwrap(), b.stddev.unwrap()) && close(a.gradient_per_second.unwrap(), b.gradient_per_second.unwrap()));
            assert_eq!(statistic(a, Statistic::Quantile, 0.9), statistic(b, Statistic::Quantile, 0.9), "merged sketches are the same sketch");
        }
        // An hour tier from the same rows.
        let hour = rolled(&rows, 3600 * S, Rows::Windows);
        assert_eq!(hour.iter().map(|r| r.aggregate.window.as_ref().unwrap().count).collect::<Vec<_>>(), vec![120, 120]);
    }

    #[test]
    fn undefined_statistics_stay_undefined_and_steps_follow_the_epoch() {
        let one = window(&[(5 * S, 2.0)], 0, 10 * S);
        assert_eq!(statistic(&one, Statistic::Stddev, 0.0), None);
        assert_eq!(statistic(&one, Statistic::Gradient, 0.0), None);
        assert_eq!(statistic(&one, Statistic::Count, 0.0), Some(1.0));
        let later = window(&[(65 * S, 4.0)], 60 * S, 70 * S);
        // Windows at 0 s and 60 s, steps of 30 s: two steps, each with its own bounds; none between.
        let steps = by_step(&[one.clone(), later], 30 * S);
        assert_eq!(steps.iter().map(|w| (w.start_ns, w.end_ns, w.count)).collect::<Vec<_>>(), vec![(0, 30 * S, 1), (60 * S, 90 * S, 1)]);
        // Two single points at distinct times: a gradient and a deviation now exist.
        let two = merge(&[&one, &steps[1]], 0, 120 * S);
        assert!(close(two.gradient_per_second.unwrap(), 2.0 / 60.0));
        assert!(close(two.stddev.unwrap(), 2f64.sqrt()));
        // Negative times fall in the step that holds them, not the one towards zero.
        let before = window(&[(-5 * S, 1.0)], -10 * S, 0);
        assert_eq!(by_step(&[before], 60 * S)[0].start_ns, -60 * S);
    }
}
