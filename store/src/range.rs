//! `Range` over rows gathered from segments and memory: pure, no IO.
//!
//! The rows may hold one window more than once (an at-least-once processor re-delivers, and a replay
//! writes what a crash left unlisted): each (series, window start) is answered once, by the copy read
//! last from Kafka (the highest offset), as a database keyed by series and start would keep it.

use std::collections::BTreeMap;

use proto::v1::{SeriesWindows, WindowStats};

use crate::segment::Located;
use crate::select::Selector;

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
        .map(|(series, windows)| SeriesWindows { series: Some(series), windows: windows.into_values().map(|(_, w)| w.clone()).collect() })
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
}
