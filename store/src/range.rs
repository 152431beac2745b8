//! Queries over rows gathered from segments and memory: pure, no IO.
//!
//! The rows may hold one window more than once (an at-least-once processor re-delivers it): each
//! (series, window start) is answered once, by the copy read last from Kafka (the highest offset), as a
//! database keyed by series and start would keep it.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{AsArray as _, BooleanArray, RecordBatch};
use arrow::datatypes::Int64Type;
use proto::v1::{Series, SeriesWindows, WindowStats};

use crate::segment::{Located, SegmentError, batch_to_aggregates};
use crate::select::Selector;

/// The rows of a segment's batch whose window starts in `[start_ns, end_ns)` and whose series
/// `selector` selects. Only those rows are decoded.
pub fn rows_in(batch: &RecordBatch, selector: &Selector, start_ns: i64, end_ns: i64) -> Result<Vec<Located>, SegmentError> {
    let starts = batch.column_by_name("start_ns").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or(SegmentError::Column("start_ns"))?;
    let metrics = batch.column_by_name("metric").and_then(|c| c.as_string_opt::<i32>()).ok_or(SegmentError::Column("metric"))?;
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let in_range = (start_ns..end_ns).contains(&starts.value(i));
            Some(in_range && (selector.metric.is_empty() || metrics.value(i) == selector.metric))
        })
        .collect();
    if keep.true_count() == 0 {
        return Ok(Vec::new());
    }
    let mut rows = batch_to_aggregates(&arrow::compute::filter_record_batch(batch, &keep)?)?;
    rows.retain(|r| r.aggregate.series.as_ref().is_some_and(|s| selector.matches(&s.metric, &s.tags)));
    Ok(rows)
}

/// The series of `rows` that `selector` selects, by key.
pub fn series_of<'a>(rows: impl IntoIterator<Item = &'a Located>, selector: &Selector) -> BTreeMap<String, Series> {
    let mut found = BTreeMap::new();
    for row in rows {
        let Some(series) = &row.aggregate.series else { continue };
        if selector.matches(&series.metric, &series.tags) {
            found.entry(series.key()).or_insert_with(|| series.clone());
        }
    }
    found
}

/// The distinct series of a segment's batch that `selector` selects, by key: each distinct series is
/// decoded once, not once per row.
pub fn series_in(batch: &RecordBatch, selector: &Selector) -> Result<BTreeMap<String, Series>, SegmentError> {
    let keys = batch.column_by_name("series").and_then(|c| c.as_string_opt::<i32>()).ok_or(SegmentError::Column("series"))?;
    let metrics = batch.column_by_name("metric").and_then(|c| c.as_string_opt::<i32>()).ok_or(SegmentError::Column("metric"))?;
    let mut first_row: HashMap<&str, usize> = HashMap::new();
    for i in 0..batch.num_rows() {
        if selector.metric.is_empty() || metrics.value(i) == selector.metric {
            first_row.entry(keys.value(i)).or_insert(i);
        }
    }
    let mut rows: Vec<u32> = first_row.into_values().map(|i| i as u32).collect();
    rows.sort_unstable();
    let picked = arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(rows))?;
    Ok(series_of(&batch_to_aggregates(&picked)?, selector))
}

/// The row of the latest window (greatest start; the last delivered among equal starts) of each
/// selected series, by series key.
pub fn latest<'a>(rows: impl IntoIterator<Item = &'a Located>, selector: &Selector) -> BTreeMap<String, &'a Located> {
    let mut found: BTreeMap<String, &'a Located> = BTreeMap::new();
    let rank = |row: &Located| (row.aggregate.window.as_ref().map_or(i64::MIN, |w| w.start_ns), row.offset);
    for row in rows {
        let (Some(series), Some(_)) = (&row.aggregate.series, &row.aggregate.window) else { continue };
        if !selector.matches(&series.metric, &series.tags) {
            continue;
        }
        let slot = found.entry(series.key()).or_insert(row);
        if rank(row) >= rank(slot) {
            *slot = row;
        }
    }
    found
}

/// A selected series and its windows by start, each with the offset it was read at.
type Found<'a> = (proto::v1::Series, BTreeMap<i64, (i64, &'a WindowStats)>);

/// The windows starting in `[start_ns, end_ns)` of every series `selector` selects: series in key
/// order, windows by start, one per start.
pub fn windows_in_range<'a>(
    rows: impl IntoIterator<Item = &'a Located>,
    selector: &Selector,
    start_ns: i64,
    end_ns: i64,
) -> Vec<SeriesWindows> {
    let mut found: BTreeMap<String, Found<'a>> = BTreeMap::new();
    for row in rows {
        let (Some(series), Some(window)) = (&row.aggregate.series, &row.aggregate.window) else { continue };
        if !(start_ns..end_ns).contains(&window.start_ns) || !selector.matches(&series.metric, &series.tags) {
            continue;
        }
        let (_, windows) = found.entry(series.key()).or_insert_with(|| (series.clone(), BTreeMap::new()));
        let slot = windows.entry(window.start_ns).or_insert((row.offset, window));
        if row.offset >= slot.0 {
            *slot = (row.offset, window);
        }
    }
    found
        .into_values()
        .map(|(series, windows)| SeriesWindows {
            series: Some(series),
            windows: windows.into_values().map(|(_, w)| w.clone()).collect(),
            samples: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proto::v1::tag_matcher::Op;
    use proto::v1::{Aggregate, Series, SeriesSelector, TagMatcher};

    use super::*;

    fn row(offset: i64, metric: &str, host: &str, start: i64, sum: f64) -> Located {
        let series = Series { metric: metric.into(), tags: [("host".to_owned(), host.to_owned())].into() };
        let window = WindowStats { start_ns: start, end_ns: start + 10, count: 1, sum, ..WindowStats::default() };
        Located { partition: 0, offset, aggregate: Aggregate { series: Some(series), window: Some(window) } }
    }

    #[test]
    fn one_window_per_start_the_last_delivered_in_range_and_selected() {
        let rows = vec![
            row(5, "cpu", "b", 20, 1.0),
            row(1, "cpu", "a", 10, 2.0),
            row(9, "cpu", "a", 10, 3.0), // re-delivered later: this one counts
            row(3, "cpu", "a", 0, 4.0),
            row(4, "cpu", "a", 30, 5.0), // at the end of the range: excluded
            row(6, "mem", "a", 10, 6.0), // another metric
            row(7, "cpu", "c", 10, 7.0), // not selected by the matcher
        ];
        let matcher = TagMatcher { name: "host".into(), op: Op::Regex as i32, value: "a|b".into() };
        let selector = Selector::compile(&SeriesSelector { metric: "cpu".into(), matchers: vec![matcher] }).unwrap();
        let got: Vec<(String, Vec<(i64, f64)>)> = windows_in_range(&rows, &selector, 0, 30)
            .into_iter()
            .map(|s| (s.series.unwrap().key(), s.windows.iter().map(|w| (w.start_ns, w.sum)).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                (r#"cpu{host="a"}"#.to_owned(), vec![(0, 4.0), (10, 3.0)]),
                (r#"cpu{host="b"}"#.to_owned(), vec![(20, 1.0)]),
            ]
        );
    }

    #[test]
    fn a_batch_is_filtered_before_it_is_decoded_and_series_are_listed_once() {
        let rows = vec![
            row(1, "cpu", "a", 0, 1.0),
            row(2, "cpu", "b", 10, 2.0),
            row(3, "cpu", "a", 20, 3.0),
            row(4, "mem", "a", 10, 4.0),
            row(5, "cpu", "a", 20, 5.0), // the same window delivered again
        ];
        let batch = crate::segment::aggregates_to_batch(&rows).unwrap();
        let matcher = TagMatcher { name: "host".into(), op: Op::Equal as i32, value: "a".into() };
        let host_a = Selector::compile(&SeriesSelector { metric: "cpu".into(), matchers: vec![matcher] }).unwrap();
        let picked: Vec<i64> = rows_in(&batch, &host_a, 10, 30).unwrap().iter().map(|r| r.offset).collect();
        assert_eq!(picked, vec![3, 5]);
        assert!(rows_in(&batch, &host_a, 30, 40).unwrap().is_empty());

        let every = Selector::compile(&SeriesSelector::default()).unwrap();
        let listed: Vec<String> = series_in(&batch, &every).unwrap().into_keys().collect();
        assert_eq!(listed, vec![r#"cpu{host="a"}"#, r#"cpu{host="b"}"#, r#"mem{host="a"}"#]);
        assert_eq!(series_in(&batch, &host_a).unwrap().len(), 1);

        let latest: Vec<(String, i64)> = latest(&rows, &every).into_iter().map(|(k, r)| (k, r.offset)).collect();
        assert_eq!(
            latest,
            vec![(r#"cpu{host="a"}"#.to_owned(), 5), (r#"cpu{host="b"}"#.to_owned(), 2), (r#"mem{host="a"}"#.to_owned(), 4)],
            "the greatest start, and among equal starts the last delivered"
        );
    }
}
