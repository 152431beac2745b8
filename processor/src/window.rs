//! Event-time windows for one input partition: pure state and arithmetic, no IO.
//!
//! Windows are tumbling (`size`) or hopping (`size` every `advance`), chosen per metric. A partition's
//! watermark is the highest event time it has seen minus the allowed lateness. A window `[start, end)`
//! closes once the watermark reaches `end`; a point whose windows have all closed is late and is never
//! merged into any (a hopping window that closed misses it while the later ones that are open get it). Every window remembers the smallest input offset it holds, so that the offset a
//! consumer may commit is known: replaying from it rebuilds every open window, and the commit metadata
//! (see [`Checkpoint`]) lets a replay skip what was already emitted.

use std::collections::BTreeMap;

use proto::v1::{Aggregate, Series};

use crate::aggregate::{Accumulator, SketchSpec};

/// How a metric's points are grouped into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows of `size_ns`, aligned to the epoch.
    Tumbling { size_ns: i64 },
    /// Windows of `size_ns` starting every `advance_ns` (aligned to the epoch); a point is in
    /// `size / advance` of them.
    Hopping { size_ns: i64, advance_ns: i64 },
}

impl WindowKind {
    /// The `[start, end)` of every window holding `ts`, oldest first.
    pub fn windows_of(&self, ts: i64) -> impl Iterator<Item = (i64, i64)> {
        let (size, advance) = match *self {
            Self::Tumbling { size_ns } => (size_ns, size_ns),
            Self::Hopping { size_ns, advance_ns } => (size_ns, advance_ns),
        };
        // The latest window holding ts starts at the last multiple of `advance` not after ts; earlier ones
        // follow while they still reach past ts.
        let last = ts.div_euclid(advance) * advance;
        let count = (size + advance - 1) / advance;
        (0..count).rev().map(move |i| last - i * advance).filter(move |start| start + size > ts).map(move |start| (start, start + size))
    }
}

/// Which windows each metric gets: the first matching rule, else the default.
#[derive(Debug, Clone)]
pub struct WindowRules {
    default: WindowKind,
    rules: Vec<(globset::GlobMatcher, WindowKind)>,
}

impl WindowRules {
    pub fn new(default: WindowKind, rules: Vec<(globset::GlobMatcher, WindowKind)>) -> Self {
        Self { default, rules }
    }

    pub fn kind_for(&self, metric: &str) -> WindowKind {
        self.rules.iter().find(|(glob, _)| glob.is_match(metric)).map_or(self.default, |(_, kind)| *kind)
    }
}

/// What became of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Merged into its open window.
    Accepted,
    /// Its window `[window_start_ns, window_end_ns)` had closed: the watermark had passed its end.
    Late { window_start_ns: i64, window_end_ns: i64, watermark_ns: i64 },
    /// A replay of an input this partition handled before its last checkpoint, whose window was already
    /// emitted (or which was already counted late): skipped without a trace.
    Replayed,
}

/// What a consumer commits for a partition: the offset to resume from, and the metadata that makes the
/// replay from it exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The smallest offset still needed: the first point of the oldest open window, or the next input.
    pub resume_offset: i64,
    /// The highest event time seen, if any.
    pub max_event_ns: Option<i64>,
    /// One past the last offset handled.
    pub next_offset: i64,
}

impl Checkpoint {
    /// `max=<ns>;next=<offset>`, kept in the committed offset's metadata.
    pub fn metadata(&self) -> String {
        match self.max_event_ns {
            Some(max) => format!("max={max};next={}", self.next_offset),
            None => format!("next={}", self.next_offset),
        }
    }

    /// Parses [`Checkpoint::metadata`]; `None` for metadata written by something else.
    pub fn parse(resume_offset: i64, metadata: &str) -> Option<Self> {
        let mut max_event_ns = None;
        let mut next_offset = None;
        for part in metadata.split(';') {
            let (key, value) = part.split_once('=')?;
            let value: i64 = value.parse().ok()?;
            match key {
                "max" => max_event_ns = Some(value),
                "next" => next_offset = Some(value),
                _ => return None,
            }
        }
        Some(Self { resume_offset, max_event_ns, next_offset: next_offset? })
    }
}

/// The open windows and the watermark of one input partition.
#[derive(Debug)]
pub struct PartitionWindows {
    allowed_lateness_ns: i64,
    sketch: SketchSpec,
    max_event_ns: Option<i64>,
    /// Offsets below this were handled before the checkpoint this state was restored from.
    replay_until: i64,
    next_offset: i64,
    /// Keyed by (end, start, series key): the windows to close are a prefix.
    open: BTreeMap<(i64, i64, String), Accumulator>,
}

impl PartitionWindows {
    /// A partition with no history.
    pub fn new(allowed_lateness_ns: i64, sketch: SketchSpec) -> Self {
        Self { allowed_lateness_ns, sketch, max_event_ns: None, replay_until: 0, next_offset: 0, open: BTreeMap::new() }
    }

    /// A partition resuming from a checkpoint it (or a previous owner) committed.
    pub fn restore(allowed_lateness_ns: i64, sketch: SketchSpec, checkpoint: Checkpoint) -> Self {
        Self {
            allowed_lateness_ns,
            sketch,
            max_event_ns: checkpoint.max_event_ns,
            replay_until: checkpoint.next_offset,
            next_offset: checkpoint.resume_offset,
            open: BTreeMap::new(),
        }
    }

    /// The current watermark: no window ending at or before it will receive another point.
    pub fn watermark(&self) -> Option<i64> {
        self.max_event_ns.map(|max| max.saturating_sub(self.allowed_lateness_ns))
    }

    /// Adds one point read at `offset` to its windows of `kind`.
    pub fn push(
        &mut self,
        key: &str,
        series: impl FnOnce() -> Series,
        kind: WindowKind,
        ts: i64,
        value: f64,
        offset: i64,
    ) -> Outcome {
        self.next_offset = self.next_offset.max(offset + 1);
        let watermark = self.watermark();
        let windows = kind.windows_of(ts);
        let closed = |end: i64| watermark.is_some_and(|w| end <= w);
        let mut latest = None;
        let mut series = Some(series);
        let mut template: Option<Series> = None;
        let mut accepted = false;
        for (start, end) in windows {
            latest = Some((start, end));
            if closed(end) {
                continue;
            }
            accepted = true;
            let sketch = &self.sketch;
            let entry = self.open.entry((end, start, key.to_owned())).or_insert_with(|| {
                let series = template.clone().unwrap_or_else(|| {
                    // Called at most once: later windows of this point reuse the first one's series.
                    let made = series.take().map(|make| make()).unwrap_or_default();
                    template = Some(made.clone());
                    made
                });
                Accumulator::new(series, start, offset, sketch)
            });
            entry.add(ts, value, offset);
        }
        if !accepted {
            let (start, end) = latest.unwrap_or((ts, ts));
            return if offset < self.replay_until {
                Outcome::Replayed
            } else {
                Outcome::Late { window_start_ns: start, window_end_ns: end, watermark_ns: watermark.unwrap_or(i64::MIN) }
            };
        }
        self.max_event_ns = Some(self.max_event_ns.map_or(ts, |max| max.max(ts)));
        Outcome::Accepted
    }

    /// Records that the input at `offset` was read but merged into no window (a malformed or refused
    /// record); returns whether it is a replay of one handled before the checkpoint, whose dead letter
    /// was therefore already written.
    pub fn skip(&mut self, offset: i64) -> bool {
        self.next_offset = self.next_offset.max(offset + 1);
        offset < self.replay_until
    }

    /// The highest event time seen (or advanced to).
    pub fn max_event(&self) -> Option<i64> {
        self.max_event_ns
    }

    /// Moves event time forward to `event_ns` without a point: how a quiet partition's windows still
    /// close (the caller derives `event_ns` from the wall clock). Never moves it back.
    pub fn advance(&mut self, event_ns: i64) {
        if self.max_event_ns.is_some_and(|max| max < event_ns) {
            self.max_event_ns = Some(event_ns);
        }
    }

    /// Removes and returns the aggregates of every window the watermark has passed, oldest first.
    pub fn close_ready(&mut self) -> Vec<Aggregate> {
        let Some(watermark) = self.watermark() else { return Vec::new() };
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let (end, start, _) = *entry.key();
            if end > watermark {
                break;
            }
            let acc = entry.remove();
            let window = acc.finish(start, end, &self.sketch);
            closed.push(Aggregate { series: Some(acc.series), window: Some(window) });
        }
        closed
    }

    /// What to commit now, given that every aggregate returned so far is durable downstream.
    pub fn checkpoint(&self) -> Checkpoint {
        let oldest_open = self.open.values().map(|acc| acc.first_offset).min();
        Checkpoint {
            resume_offset: oldest_open.unwrap_or(self.next_offset),
            max_event_ns: self.max_event_ns,
            // A restored partition that has not yet replayed up to its predecessor's position must pass
            // that position on, or the next owner would count replayed late points a second time.
            next_offset: self.next_offset.max(self.replay_until),
        }
    }

    /// How many windows are open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
// `1 * S` reads as one second, beside `2 * S`.
#[allow(clippy::identity_op)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const LATENESS: i64 = 5 * S;
    const TUMBLING: WindowKind = WindowKind::Tumbling { size_ns: 10 * S };

    fn fresh() -> PartitionWindows {
        PartitionWindows::new(LATENESS, SketchSpec::default())
    }

    fn restored(checkpoint: Checkpoint) -> PartitionWindows {
        PartitionWindows::restore(LATENESS, SketchSpec::default(), checkpoint)
    }

    fn series(name: &str) -> Series {
        Series { metric: name.to_owned(), tags: Default::default() }
    }

    fn push(w: &mut PartitionWindows, key: &str, ts: i64, value: f64, offset: i64) -> Outcome {
        w.push(key, || series(key), TUMBLING, ts, value, offset)
    }

    fn stats(agg: &Aggregate) -> &proto::v1::WindowStats {
        agg.window.as_ref().unwrap()
    }

    #[test]
    fn windows_align_to_the_epoch_for_negative_times_too() {
        let of = |kind: WindowKind, ts: i64| kind.windows_of(ts).collect::<Vec<_>>();
        assert_eq!(of(TUMBLING, 0), vec![(0, 10 * S)]);
        assert_eq!(of(TUMBLING, 10 * S - 1), vec![(0, 10 * S)]);
        assert_eq!(of(TUMBLING, 10 * S), vec![(10 * S, 20 * S)]);
        assert_eq!(of(TUMBLING, -1), vec![(-10 * S, 0)]);
        let hopping = WindowKind::Hopping { size_ns: 30 * S, advance_ns: 10 * S };
        assert_eq!(of(hopping, 25 * S), vec![(0, 30 * S), (10 * S, 40 * S), (20 * S, 50 * S)]);
        assert_eq!(of(hopping, 30 * S), vec![(10 * S, 40 * S), (20 * S, 50 * S), (30 * S, 60 * S)]);
        // An advance that does not divide the size: windows of 25 s every 10 s.
        let uneven = WindowKind::Hopping { size_ns: 25 * S, advance_ns: 10 * S };
        assert_eq!(of(uneven, 24 * S), vec![(0, 25 * S), (10 * S, 35 * S), (20 * S, 45 * S)]);
        assert_eq!(of(uneven, 26 * S), vec![(10 * S, 35 * S), (20 * S, 45 * S)]);
    }

    #[test]
    fn a_hopping_point_joins_the_windows_still_open() {
        let hopping = WindowKind::Hopping { size_ns: 20 * S, advance_ns: 10 * S };
        let mut w = fresh();
        let add = |w: &mut PartitionWindows, ts: i64, v: f64, o: i64| w.push("a", || series("a"), hopping, ts, v, o);
        assert_eq!(add(&mut w, 5 * S, 1.0, 0), Outcome::Accepted);
        assert_eq!(add(&mut w, 15 * S, 2.0, 1), Outcome::Accepted);
        assert_eq!(add(&mut w, 26 * S, 4.0, 2), Outcome::Accepted);
        // Watermark 21 s: [0, 20) has closed, [10, 30) is open.
        let closed = w.close_ready();
        assert_eq!(closed.iter().map(|a| (stats(a).start_ns, stats(a).count, stats(a).sum)).collect::<Vec<_>>(), vec![(-10 * S, 1, 1.0), (0, 2, 3.0)]);
        // 12 s falls in [0, 20) (closed) and [10, 30) (open): accepted by the open one only.
        assert_eq!(add(&mut w, 12 * S, 8.0, 3), Outcome::Accepted);
        assert_eq!(add(&mut w, 9 * S, 9.0, 4), Outcome::Late { window_start_ns: 0, window_end_ns: 20 * S, watermark_ns: 21 * S });
        add(&mut w, 60 * S, 0.0, 5);
        let sums: Vec<(i64, f64)> = w.close_ready().iter().map(|a| (stats(a).start_ns, stats(a).sum)).collect();
        assert_eq!(sums, vec![(10 * S, 14.0), (20 * S, 4.0)]);
    }

    #[test]
    fn a_window_closes_when_the_watermark_reaches_its_end() {
        let mut w = fresh();
        assert_eq!(push(&mut w, "a", 1 * S, 1.0, 0), Outcome::Accepted);
        assert_eq!(push(&mut w, "a", 14 * S, 2.0, 1), Outcome::Accepted);
        assert!(w.close_ready().is_empty(), "watermark 9 s has not reached 10 s");
        assert_eq!(push(&mut w, "a", 15 * S, 3.0, 2), Outcome::Accepted);
        let closed = w.close_ready();
        assert_eq!(closed.len(), 1);
        assert_eq!((stats(&closed[0]).start_ns, stats(&closed[0]).end_ns, stats(&closed[0]).count), (0, 10 * S, 1));
    }

    #[test]
    fn aggregates_match_a_direct_computation() {
        let mut w = fresh();
        // value = 3 + 2 t: slope 2 per second; out of order within the window.
        let points = [(4, 11.0), (1, 5.0), (7, 17.0), (2, 7.0)];
        for (i, (t, v)) in points.iter().enumerate() {
            push(&mut w, "a", t * S, *v, i as i64);
        }
        push(&mut w, "b", 3 * S, 1.5, 9);
        push(&mut w, "a", 30 * S, 0.0, 10);
        let closed = w.close_ready();
        assert_eq!(closed.len(), 2);
        let a = stats(&closed[0]);
        assert_eq!((a.count, a.sum, a.mean, a.min, a.max), (4, 40.0, 10.0, 5.0, 17.0));
        assert!((a.gradient_per_second.unwrap() - 2.0).abs() < 1e-12);
        let b = stats(&closed[1]);
        assert_eq!((b.count, b.sum, b.gradient_per_second), (1, 1.5, None), "one point has no slope");
    }

    #[test]
    fn points_sharing_one_timestamp_have_no_slope() {
        let mut w = fresh();
        push(&mut w, "a", 2 * S, 1.0, 0);
        push(&mut w, "a", 2 * S, 3.0, 1);
        push(&mut w, "a", 40 * S, 0.0, 2);
        assert_eq!(stats(&w.close_ready()[0]).gradient_per_second, None);
    }

    #[test]
    fn a_point_behind_the_watermark_is_late_and_not_merged() {
        let mut w = fresh();
        push(&mut w, "a", 1 * S, 1.0, 0);
        push(&mut w, "a", 16 * S, 1.0, 1);
        assert_eq!(w.close_ready().len(), 1);
        assert_eq!(
            push(&mut w, "a", 9 * S, 100.0, 2),
            Outcome::Late { window_start_ns: 0, window_end_ns: 10 * S, watermark_ns: 11 * S }
        );
        // Within the lateness: the 10 s window is still open.
        assert_eq!(push(&mut w, "a", 12 * S, 1.0, 3), Outcome::Accepted);
    }

    #[test]
    fn advancing_event_time_closes_a_quiet_partition_and_makes_later_points_late() {
        let mut w = fresh();
        w.advance(100 * S);
        assert_eq!(w.max_event(), None, "a partition that saw nothing has no event time to advance");
        push(&mut w, "a", 1 * S, 1.0, 0);
        w.advance(14 * S);
        assert!(w.close_ready().is_empty());
        w.advance(15 * S);
        assert_eq!(w.close_ready().len(), 1);
        w.advance(3 * S);
        assert_eq!(w.max_event(), Some(15 * S), "never backwards");
        assert!(matches!(push(&mut w, "a", 2 * S, 1.0, 1), Outcome::Late { .. }));
    }

    #[test]
    fn checkpoint_resumes_at_the_oldest_open_window() {
        let mut w = fresh();
        push(&mut w, "a", 1 * S, 1.0, 100);
        push(&mut w, "b", 12 * S, 1.0, 101);
        push(&mut w, "a", 3 * S, 1.0, 102);
        assert_eq!(w.checkpoint(), Checkpoint { resume_offset: 100, max_event_ns: Some(12 * S), next_offset: 103 });
        push(&mut w, "b", 16 * S, 1.0, 103);
        w.close_ready();
        assert_eq!(w.checkpoint(), Checkpoint { resume_offset: 101, max_event_ns: Some(16 * S), next_offset: 104 });
        let text = w.checkpoint().metadata();
        assert_eq!(Checkpoint::parse(101, &text), Some(w.checkpoint()));
        assert_eq!(Checkpoint::parse(0, "something else"), None);
    }

    #[test]
    fn skipped_records_move_the_position_and_are_known_on_replay() {
        let mut w = fresh();
        assert!(!w.skip(0));
        assert_eq!(w.checkpoint(), Checkpoint { resume_offset: 1, max_event_ns: None, next_offset: 1 });
        let mut again = restored(Checkpoint { resume_offset: 0, max_event_ns: None, next_offset: 1 });
        assert!(again.skip(0), "offset 0 was handled before the checkpoint");
        assert!(!again.skip(1));
    }

    #[test]
    fn a_restored_partition_passes_its_checkpoint_on_unchanged() {
        let checkpoint = Checkpoint { resume_offset: 100, max_event_ns: Some(12 * S), next_offset: 103 };
        assert_eq!(restored(checkpoint).checkpoint(), checkpoint);
    }

    /// Replaying from a checkpoint, then continuing, emits exactly what an uninterrupted run emits.
    #[test]
    fn replay_from_a_checkpoint_equals_an_uninterrupted_run() {
        // (series, second, value): interleaved, out of order, with one point beyond the lateness.
        let input: Vec<(&str, i64, f64)> = vec![
            ("a", 1, 1.0), ("b", 2, 2.0), ("a", 12, 3.0), ("b", 8, 4.0), ("a", 17, 5.0),
            ("a", 3, 6.0), ("b", 21, 7.0), ("a", 14, 8.0), ("b", 33, 9.0), ("a", 25, 10.0), ("a", 44, 11.0),
        ];
        let run = |w: &mut PartitionWindows, from: usize, to: usize, out: &mut Vec<Aggregate>, late: &mut usize| {
            for (offset, (key, t, v)) in input.iter().enumerate().take(to).skip(from) {
                if let Outcome::Late { .. } = push(w, key, t * S, *v, offset as i64) {
                    *late += 1;
                }
                out.extend(w.close_ready());
            }
        };
        let (mut whole, mut whole_late) = (Vec::new(), 0);
        run(&mut fresh(), 0, input.len(), &mut whole, &mut whole_late);
        assert_eq!(whole_late, 1, "the point at 3 s arrives when the watermark is 12 s");

        // Every pair of crashes: the first owner reads `first` messages, its successor `second` (zero
        // included: a crash right after the restore), and a third owner reads to the end.
        for first in 1..input.len() {
            for second in 0..input.len() {
                let (mut emitted, mut late) = (Vec::new(), 0);
                let mut windows = fresh();
                let mut position = 0;
                for reads in [first, second] {
                    let to = (position + reads).min(input.len());
                    run(&mut windows, position, to, &mut emitted, &mut late);
                    let checkpoint = windows.checkpoint();
                    windows = restored(checkpoint);
                    position = checkpoint.resume_offset as usize;
                }
                run(&mut windows, position, input.len(), &mut emitted, &mut late);
                // Owners emit again whatever their predecessor emitted after its checkpoint; keyed by
                // window, a store keeps one copy, and every copy must be identical.
                let case = format!("crashes after {first} and {second} reads");
                let mut by_window: BTreeMap<(i64, String), Aggregate> = BTreeMap::new();
                for agg in emitted {
                    let key = (stats(&agg).start_ns, agg.series.as_ref().unwrap().metric.clone());
                    if let Some(previous) = by_window.insert(key, agg.clone()) {
                        assert_eq!(previous, agg, "a re-emitted window must be identical ({case})");
                    }
                }
                let mut expected: Vec<Aggregate> = whole.clone();
                expected.sort_by_key(|a| (stats(a).start_ns, a.series.as_ref().unwrap().metric.clone()));
                assert_eq!(by_window.into_values().collect::<Vec<_>>(), expected, "{case}");
                assert_eq!(late, whole_late, "late points are counted once ({case})");
            }
        }
    }
}
