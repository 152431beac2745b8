//! Event-time windows for one input partition: pure state and arithmetic, no IO.
//!
//! Windows are tumbling (`size`), hopping (`size` every `advance`) or session windows (a series' points
//! closer than `gap` to each other), chosen per metric. A partition's watermark is the highest event time
//! it has seen minus the allowed lateness. A window `[start, end)` closes once the watermark reaches
//! `end`; a point whose windows have all closed is late and is never merged into any (a hopping window
//! that closed misses it while the later ones that are open get it; a session point joins an open
//! session it touches, and is late only when it touches none and its own `[t, t + gap)` has closed).
//!
//! The open windows are the partition's whole state: [`PartitionWindows::take_changes`] yields what
//! changed since the last call, for the changelog written in the same transaction as the input offsets,
//! and [`PartitionWindows::restore`] rebuilds the partition from that changelog and the committed
//! [`Checkpoint`], so that a new owner continues exactly where the last commit left off.
//!
//! A closed window's tombstone may wait for a later commit ([`Tombstones::Later`]): the checkpoint's
//! watermark already says the window closed, and a restore drops (and tombstones) any window it passed.
//! So the commit that makes a closed window's aggregate visible carries only what must go with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proto::v1::{Aggregate, Series, WindowState};

use crate::aggregate::{Accumulator, SketchSpec};

/// How a metric's points are grouped into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows of `size_ns`, aligned to the epoch.
    Tumbling { size_ns: i64 },
    /// Windows of `size_ns` starting every `advance_ns` (aligned to the epoch); a point is in
    /// `size / advance` of them.
    Hopping { size_ns: i64, advance_ns: i64 },
    /// Per series, a run of points each less than `gap_ns` after the one before; the window is
    /// `[first point, last point + gap)`.
    Session { gap_ns: i64 },
}

impl WindowKind {
    /// The `[start, end)` of every fixed window holding `ts`, oldest first; for a session, the window the
    /// point opens on its own.
    pub fn windows_of(&self, ts: i64) -> impl Iterator<Item = (i64, i64)> {
        let (size, advance, aligned) = match *self {
            Self::Tumbling { size_ns } => (size_ns, size_ns, true),
            Self::Hopping { size_ns, advance_ns } => (size_ns, advance_ns, true),
            Self::Session { gap_ns } => (gap_ns, gap_ns, false),
        };
        // The latest window holding ts starts at the last multiple of `advance` not after ts; earlier ones
        // follow while they still reach past ts.
        let last = if aligned { ts.div_euclid(advance) * advance } else { ts };
        let count = (size + advance - 1) / advance;
        (0..count).rev().map(move |i| last - i * advance).filter(move |start| start + size > ts).map(move |start| (start, start.saturating_add(size)))
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

    /// The definitions in a line, for the log: `default tumbling 10s; cpu_* hopping 1m/10s`.
    pub fn describe(&self) -> String {
        let kind = |k: &WindowKind| {
            let d = |ns: i64| humantime::format_duration(std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0))).to_string();
            match *k {
                WindowKind::Tumbling { size_ns } => format!("tumbling {}", d(size_ns)),
                WindowKind::Hopping { size_ns, advance_ns } => format!("hopping {}/{}", d(size_ns), d(advance_ns)),
                WindowKind::Session { gap_ns } => format!("session {}", d(gap_ns)),
            }
        };
        std::iter::once(format!("default {}", kind(&self.default)))
            .chain(self.rules.iter().map(|(glob, k)| format!("{} {}", glob.glob(), kind(k))))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn kind_for(&self, metric: &str) -> WindowKind {
        self.rules.iter().find(|(glob, _)| glob.is_match(metric)).map_or(self.default, |(_, kind)| *kind)
    }
}

/// What became of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Merged into its open windows.
    Accepted,
    /// Its window `[window_start_ns, window_end_ns)` had closed: the watermark had passed its end.
    Late { window_start_ns: i64, window_end_ns: i64, watermark_ns: i64 },
}

/// What a consumer commits for a partition besides the offset: the watermark, so that a new owner judges
/// lateness as the last one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// One past the last offset handled: where the next owner resumes.
    pub next_offset: i64,
    /// The highest event time seen (or advanced to), if any.
    pub max_event_ns: Option<i64>,
    /// One past the last changelog record this partition's windows depend on: a restore reads the
    /// changelog at least this far, which also waits out the commit markers of the last transaction.
    pub changelog_end: i64,
}

impl Checkpoint {
    /// `max=<ns>;next=<offset>;log=<offset>`, kept in the committed offset's metadata.
    pub fn metadata(&self) -> String {
        let max = self.max_event_ns.map(|max| format!("max={max};")).unwrap_or_default();
        format!("{max}next={};log={}", self.next_offset, self.changelog_end)
    }

    /// Parses [`Checkpoint::metadata`]; `None` for metadata written by something else.
    pub fn parse(metadata: &str) -> Option<Self> {
        let mut max_event_ns = None;
        let mut next_offset = None;
        let mut changelog_end = 0;
        for part in metadata.split(';') {
            let (key, value) = part.split_once('=')?;
            let value: i64 = value.parse().ok()?;
            match key {
                "max" => max_event_ns = Some(value),
                "next" => next_offset = Some(value),
                "log" => changelog_end = value,
                _ => return None,
            }
        }
        Some(Self { next_offset: next_offset?, max_event_ns, changelog_end })
    }
}

/// Whether [`PartitionWindows::take_changes`] tombstones the windows that closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstones {
    /// Every tombstone due: the changelog then holds exactly the open windows.
    All,
    /// All but closed windows' (kept for the next `All`): what a commit that hurries closed windows'
    /// aggregates needs. A session merged into another is tombstoned even so, since a restore could
    /// not tell it from an open one.
    Later,
}

/// One change to a partition's changelog.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The window under `key` is now `state`.
    Put { key: String, state: Box<WindowState> },
    /// The window under `key` closed (or was merged into another session): a tombstone.
    Delete { key: String },
}

/// The changelog key of a fixed window.
fn fixed_key(start: i64, end: i64, series: &str) -> String {
    format!("w:{start}:{end}:{series}")
}

/// The changelog key of a session: its id stays while its bounds move.
fn session_key(id: u64, series: &str) -> String {
    format!("s:{id}:{series}")
}

/// An open window's statistics and its changelog bookkeeping.
#[derive(Debug, Clone)]
struct Slot {
    acc: Accumulator,
    /// Changed since the last [`PartitionWindows::take_changes`].
    dirty: bool,
    /// Has a record in the changelog, which a tombstone must remove when the window goes.
    persisted: bool,
}

impl Slot {
    fn new(acc: Accumulator) -> Self {
        Self { acc, dirty: true, persisted: false }
    }
}

/// One open session of a series.
#[derive(Debug, Clone)]
struct Session {
    /// The offset of the point that opened it: unique within the partition, forever.
    id: u64,
    start: i64,
    end: i64,
    slot: Slot,
}

/// The open windows and the watermark of one input partition.
#[derive(Debug)]
pub struct PartitionWindows {
    allowed_lateness_ns: i64,
    sketch: SketchSpec,
    max_event_ns: Option<i64>,
    next_offset: i64,
    changelog_end: i64,
    /// Tumbling and hopping windows keyed by (end, start, series key): the windows to close are a prefix.
    fixed: BTreeMap<(i64, i64, String), Slot>,
    /// The open sessions of each series (rarely more than one or two).
    sessions: HashMap<String, Vec<Session>>,
    /// Every open session as (end, series key, id): the sessions to close are a prefix.
    session_ends: BTreeSet<(i64, String, u64)>,
    /// Changelog keys of persisted windows that have gone since the last `take_changes`, other than
    /// by closing: a restore would take them for open windows.
    tombstones: Vec<String>,
    /// Changelog keys of persisted windows that closed and have not been tombstoned yet.
    closed: Vec<String>,
}

/// A changelog record that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("changelog record {key:?} holds no window state that this processor can read")]
pub struct BadState {
    pub key: String,
}

impl PartitionWindows {
    /// A partition with no history.
    pub fn new(allowed_lateness_ns: i64, sketch: SketchSpec) -> Self {
        Self {
            allowed_lateness_ns,
            sketch,
            max_event_ns: None,
            next_offset: 0,
            changelog_end: 0,
            fixed: BTreeMap::new(),
            sessions: HashMap::new(),
            session_ends: BTreeSet::new(),
            tombstones: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// A partition resuming from the checkpoint its last owner committed and the windows its changelog
    /// holds (the latest record of each key that is not a tombstone). A window the checkpoint's watermark
    /// has passed closed, and its aggregate committed, before that checkpoint; only its tombstone
    /// waited (see [`Tombstones::Later`]): it is dropped and tombstoned at the next full commit.
    pub fn restore(
        allowed_lateness_ns: i64,
        sketch: SketchSpec,
        checkpoint: Checkpoint,
        states: impl IntoIterator<Item = (String, WindowState)>,
    ) -> Result<Self, BadState> {
        let mut windows = Self::new(allowed_lateness_ns, sketch);
        windows.max_event_ns = checkpoint.max_event_ns;
        windows.next_offset = checkpoint.next_offset;
        windows.changelog_end = checkpoint.changelog_end;
        let watermark = windows.watermark();
        for (key, state) in states {
            let (start, end, session_id) = (state.start_ns, state.end_ns, state.session_id);
            if watermark.is_some_and(|watermark| end <= watermark) {
                windows.closed.push(key);
                continue;
            }
            let Some(acc) = Accumulator::from_state(state) else { return Err(BadState { key }) };
            let slot = Slot { acc, dirty: false, persisted: true };
            let series = slot.acc.series.key();
            match session_id {
                Some(id) => {
                    windows.session_ends.insert((end, series.clone(), id));
                    windows.sessions.entry(series).or_default().push(Session { id, start, end, slot });
                }
                None => {
                    windows.fixed.insert((end, start, series), slot);
                }
            }
        }
        Ok(windows)
    }

    /// A partition starting afresh over an old changelog (its committed offset was moved or deleted by
    /// something else than a processor): the old windows are dropped, and tombstoned at the next commit.
    pub fn discard(allowed_lateness_ns: i64, sketch: SketchSpec, stale_keys: impl IntoIterator<Item = String>) -> Self {
        let mut windows = Self::new(allowed_lateness_ns, sketch);
        windows.tombstones.extend(stale_keys);
        windows
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
        let outcome = match kind {
            WindowKind::Session { gap_ns } => self.push_session(key, series, gap_ns, ts, value, offset),
            _ => self.push_fixed(key, series, kind, ts, value),
        };
        if outcome == Outcome::Accepted {
            self.max_event_ns = Some(self.max_event_ns.map_or(ts, |max| max.max(ts)));
        }
        outcome
    }

    fn is_closed(&self, end: i64) -> bool {
        self.watermark().is_some_and(|w| end <= w)
    }

    fn late(&self, window_start_ns: i64, window_end_ns: i64) -> Outcome {
        Outcome::Late { window_start_ns, window_end_ns, watermark_ns: self.watermark().unwrap_or(i64::MIN) }
    }

    fn push_fixed(&mut self, key: &str, series: impl FnOnce() -> Series, kind: WindowKind, ts: i64, value: f64) -> Outcome {
        let mut latest = None;
        let mut series = Some(series);
        let mut template: Option<Series> = None;
        let mut accepted = false;
        for (start, end) in kind.windows_of(ts) {
            latest = Some((start, end));
            if self.is_closed(end) {
                continue;
            }
            accepted = true;
            let sketch = &self.sketch;
            let slot = self.fixed.entry((end, start, key.to_owned())).or_insert_with(|| {
                let series = template.clone().unwrap_or_else(|| {
                    // Called at most once: later windows of this point reuse the first one's series.
                    let made = series.take().map(|make| make()).unwrap_or_default();
                    template = Some(made.clone());
                    made
                });
                Slot::new(Accumulator::new(series, start, sketch))
            });
            slot.acc.add(ts, value);
            slot.dirty = true;
        }
        if accepted {
            return Outcome::Accepted;
        }
        let (start, end) = latest.unwrap_or((ts, ts));
        self.late(start, end)
    }

    fn push_session(&mut self, key: &str, series: impl FnOnce() -> Series, gap: i64, ts: i64, value: f64, offset: i64) -> Outcome {
        let end = ts.saturating_add(gap);
        let open = self.sessions.get_mut(key).map(std::mem::take).unwrap_or_default();
        // Every open session that [ts, ts + gap) touches merges with the point into one.
        let (mut touched, mut others): (Vec<Session>, Vec<Session>) = open.into_iter().partition(|s| s.start < end && ts < s.end);
        if touched.is_empty() {
            if self.is_closed(end) {
                self.put_sessions(key, others);
                return self.late(ts, end);
            }
            let mut acc = Accumulator::new(series(), ts, &self.sketch);
            acc.add(ts, value);
            let id = u64::try_from(offset).unwrap_or_default();
            self.session_ends.insert((end, key.to_owned(), id));
            others.push(Session { id, start: ts, end, slot: Slot::new(acc) });
            self.put_sessions(key, others);
            return Outcome::Accepted;
        }
        // The oldest id survives, so that the merge does not depend on the order the sessions were kept in.
        touched.sort_by_key(|s| s.id);
        let mut absorbed = touched.into_iter();
        let mut survivor = absorbed.next().unwrap_or_else(|| unreachable!("touched is not empty"));
        self.session_ends.remove(&(survivor.end, key.to_owned(), survivor.id));
        for other in absorbed {
            self.session_ends.remove(&(other.end, key.to_owned(), other.id));
            if other.slot.persisted {
                self.tombstones.push(session_key(other.id, key));
            }
            survivor.slot.acc.merge(&other.slot.acc);
            survivor.start = survivor.start.min(other.start);
            survivor.end = survivor.end.max(other.end);
        }
        survivor.slot.acc.add(ts, value);
        survivor.slot.dirty = true;
        survivor.start = survivor.start.min(ts);
        survivor.end = survivor.end.max(end);
        self.session_ends.insert((survivor.end, key.to_owned(), survivor.id));
        others.push(survivor);
        self.put_sessions(key, others);
        Outcome::Accepted
    }

    fn put_sessions(&mut self, key: &str, sessions: Vec<Session>) {
        if sessions.is_empty() {
            self.sessions.remove(key);
        } else if let Some(slot) = self.sessions.get_mut(key) {
            *slot = sessions;
        } else {
            self.sessions.insert(key.to_owned(), sessions);
        }
    }

    /// Records that the input at `offset` was read but merged into no window (a malformed or refused
    /// record).
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
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

    /// Removes and returns the aggregates of every window the watermark has passed: fixed windows, then
    /// sessions, each oldest end first.
    pub fn close_ready(&mut self) -> Vec<Aggregate> {
        let Some(watermark) = self.watermark() else { return Vec::new() };
        let mut closed = Vec::new();
        while let Some(entry) = self.fixed.first_entry() {
            let (end, start, _) = *entry.key();
            if end > watermark {
                break;
            }
            let ((_, _, series), slot) = entry.remove_entry();
            if slot.persisted {
                self.closed.push(fixed_key(start, end, &series));
            }
            let window = slot.acc.finish(start, end, &self.sketch);
            closed.push(Aggregate { series: Some(slot.acc.series), window: Some(window) });
        }
        while self.session_ends.first().is_some_and(|(end, _, _)| *end <= watermark) {
            let Some((_, series, id)) = self.session_ends.pop_first() else { break };
            let Some(open) = self.sessions.get_mut(&series) else { continue };
            let Some(at) = open.iter().position(|s| s.id == id) else { continue };
            let session = open.swap_remove(at);
            if open.is_empty() {
                self.sessions.remove(&series);
            }
            if session.slot.persisted {
                self.closed.push(session_key(id, &series));
            }
            let window = session.slot.acc.finish(session.start, session.end, &self.sketch);
            closed.push(Aggregate { series: Some(session.slot.acc.series), window: Some(window) });
        }
        closed
    }

    /// What to commit with the offsets, given that every aggregate and change returned so far is part of
    /// the same commit.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint { next_offset: self.next_offset, max_event_ns: self.max_event_ns, changelog_end: self.changelog_end }
    }

    /// Records that the changelog holds this partition's records up to (not including) `end`.
    pub fn changelog_written(&mut self, end: i64) {
        self.changelog_end = self.changelog_end.max(end);
    }

    /// The changelog records that bring it up to date: a tombstone for every persisted window that has
    /// gone (closed ones' only with [`Tombstones::All`]), the state of every window that changed. A
    /// window that opened and closed between two calls never reaches the changelog.
    pub fn take_changes(&mut self, tombstones: Tombstones) -> Vec<Change> {
        let mut gone = std::mem::take(&mut self.tombstones);
        if tombstones == Tombstones::All {
            gone.append(&mut self.closed);
        }
        let mut changes: Vec<Change> = gone.into_iter().map(|key| Change::Delete { key }).collect();
        for ((end, start, series), slot) in self.fixed.iter_mut().filter(|(_, slot)| slot.dirty) {
            slot.dirty = false;
            slot.persisted = true;
            let state = Box::new(slot.acc.to_state(*start, *end, None));
            changes.push(Change::Put { key: fixed_key(*start, *end, series), state });
        }
        for (series, open) in &mut self.sessions {
            for session in open.iter_mut().filter(|s| s.slot.dirty) {
                session.slot.dirty = false;
                session.slot.persisted = true;
                let state = Box::new(session.slot.acc.to_state(session.start, session.end, Some(session.id)));
                changes.push(Change::Put { key: session_key(session.id, series), state });
            }
        }
        changes
    }

    /// How many windows are open.
    pub fn open_windows(&self) -> usize {
        self.fixed.len() + self.session_ends.len()
    }
}

#[cfg(test)]
// `1 * S` reads as one second, beside `2 * S`.
#[allow(clippy::identity_op)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const S: i64 = 1_000_000_000;
    const LATENESS: i64 = 5 * S;
    const TUMBLING: WindowKind = WindowKind::Tumbling { size_ns: 10 * S };

    fn fresh() -> PartitionWindows {
        PartitionWindows::new(LATENESS, SketchSpec::default())
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
    fn the_checkpoint_rides_in_the_offset_metadata() {
        let mut w = fresh();
        push(&mut w, "a", 1 * S, 1.0, 100);
        push(&mut w, "b", 12 * S, 1.0, 101);
        w.skip(102);
        let checkpoint = w.checkpoint();
        assert_eq!(checkpoint, Checkpoint { next_offset: 103, max_event_ns: Some(12 * S), changelog_end: 0 });
        w.changelog_written(40);
        w.changelog_written(30);
        let checkpoint = w.checkpoint();
        assert_eq!(checkpoint.metadata(), format!("max={};next=103;log=40", 12 * S));
        assert_eq!(Checkpoint::parse(&checkpoint.metadata()), Some(checkpoint));
        assert_eq!(Checkpoint::parse("next=7"), Some(Checkpoint { next_offset: 7, max_event_ns: None, changelog_end: 0 }));
        assert_eq!(Checkpoint::parse("something else"), None);
        assert_eq!(Checkpoint::parse(""), None);
    }

    const GAP: i64 = 3 * S;
    const SESSION: WindowKind = WindowKind::Session { gap_ns: GAP };

    fn session(w: &mut PartitionWindows, key: &str, ts: i64, value: f64, offset: i64) -> Outcome {
        w.push(key, || series(key), SESSION, ts, value, offset)
    }

    fn bounds(closed: &[Aggregate]) -> Vec<(i64, i64, u64, f64)> {
        closed.iter().map(|a| (stats(a).start_ns, stats(a).end_ns, stats(a).count, stats(a).sum)).collect()
    }

    #[test]
    fn sessions_grow_merge_and_close_a_gap_after_their_last_point() {
        let mut w = fresh();
        assert_eq!(session(&mut w, "a", 10 * S, 1.0, 0), Outcome::Accepted);
        assert_eq!(session(&mut w, "a", 12 * S, 2.0, 1), Outcome::Accepted); // within the gap: [10, 15)
        assert_eq!(session(&mut w, "a", 17 * S, 4.0, 2), Outcome::Accepted); // a second session: [17, 20)
        assert_eq!(w.open_windows(), 2);
        // 14.5 s touches both ([14.5, 17.5) meets [17, 20)): one session [10, 20).
        assert_eq!(session(&mut w, "a", 14 * S + S / 2, 8.0, 3), Outcome::Accepted);
        assert_eq!(w.open_windows(), 1);
        assert_eq!(session(&mut w, "b", 11 * S, 16.0, 4), Outcome::Accepted);
        // Watermark 19 s: b's [11, 14) closes, a's [10, 20) is open.
        assert_eq!(session(&mut w, "b", 24 * S, 0.0, 5), Outcome::Accepted);
        assert_eq!(bounds(&w.close_ready()), vec![(11 * S, 14 * S, 1, 16.0)]);
        // An old point still joins the open session it touches; one that touches nothing open is late.
        assert_eq!(session(&mut w, "a", 8 * S, 32.0, 6), Outcome::Accepted);
        assert_eq!(
            session(&mut w, "b", 12 * S, 1.0, 7),
            Outcome::Late { window_start_ns: 12 * S, window_end_ns: 15 * S, watermark_ns: 19 * S }
        );
        assert_eq!(session(&mut w, "c", 40 * S, 0.0, 8), Outcome::Accepted);
        assert_eq!(bounds(&w.close_ready()), vec![(8 * S, 20 * S, 5, 47.0), (24 * S, 27 * S, 1, 0.0)]);
        let closed = w.close_ready();
        assert!(closed.is_empty());
    }

    #[test]
    fn changes_put_what_changed_and_tombstone_what_was_persisted() {
        let keys = |changes: &[Change]| {
            let mut keys: Vec<String> = changes
                .iter()
                .map(|c| match c {
                    Change::Put { key, .. } => format!("put {key}"),
                    Change::Delete { key } => format!("del {key}"),
                })
                .collect();
            keys.sort();
            keys
        };
        let mut w = fresh();
        push(&mut w, "a", 1 * S, 1.0, 0);
        session(&mut w, "s", 11 * S, 1.0, 1);
        session(&mut w, "s", 14 * S, 1.0, 2);
        assert_eq!(keys(&w.take_changes(Tombstones::All)), vec!["put s:1:s", "put s:2:s", "put w:0:10000000000:a"]);
        assert!(w.take_changes(Tombstones::All).is_empty(), "nothing changed since");
        // 12.5 s joins the two sessions: the younger one's record goes. A window that opens and closes
        // between two calls (b's) never reaches the changelog.
        session(&mut w, "s", 12 * S + S / 2, 1.0, 3);
        push(&mut w, "b", 2 * S, 1.0, 4);
        push(&mut w, "a", 16 * S, 1.0, 5);
        assert_eq!(bounds(&w.close_ready()), vec![(0, 10 * S, 1, 1.0), (0, 10 * S, 1, 1.0)], "a's and b's first windows");
        // The closed window's tombstone may wait; the merged session's may not.
        assert_eq!(keys(&w.take_changes(Tombstones::Later)), vec!["del s:2:s", "put s:1:s", "put w:10000000000:20000000000:a"]);
        assert_eq!(keys(&w.take_changes(Tombstones::All)), vec!["del w:0:10000000000:a"]);
        assert!(w.take_changes(Tombstones::All).is_empty(), "nothing changed since");
    }

    #[test]
    fn a_changelog_entry_that_does_not_decode_is_named() {
        let state = WindowState { sketch: vec![0xff; 3], ..WindowState::default() };
        let restored = PartitionWindows::restore(LATENESS, SketchSpec::default(), Checkpoint { next_offset: 0, max_event_ns: None, changelog_end: 0 }, [("w:1".to_owned(), state)]);
        assert_eq!(restored.err(), Some(BadState { key: "w:1".to_owned() }));
    }

    /// The rules of the restore tests: tumbling for `a`, hopping for `h`, sessions for `s`.
    fn mixed_kind(key: &str) -> WindowKind {
        match key.as_bytes()[0] {
            b'h' => WindowKind::Hopping { size_ns: 20 * S, advance_ns: 10 * S },
            b's' => SESSION,
            _ => TUMBLING,
        }
    }

    /// A compacted changelog: the latest state of each key.
    fn apply(changelog: &mut BTreeMap<String, WindowState>, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Put { key, state } => {
                    changelog.insert(key, *state);
                }
                Change::Delete { key } => {
                    assert!(changelog.remove(&key).is_some(), "a tombstone for a key never written: {key}");
                }
            }
        }
    }

    /// Crashing anywhere and restoring from the last commit's changelog and checkpoint, then continuing,
    /// commits exactly what an uninterrupted run emits: every window once, bit for bit, and every late
    /// point once; also when commits leave closed windows' tombstones for later.
    #[test]
    fn restoring_from_the_changelog_equals_an_uninterrupted_run() {
        // (series, second, value): interleaved, out of order, sessions that merge, late points.
        let input: Vec<(&str, i64, f64)> = vec![
            ("a", 1, 1.0), ("s", 2, 2.0), ("h", 3, 0.5), ("s", 6, 4.0), ("s", 4, 6.0), ("a", 12, 3.0),
            ("a", 17, 5.0), ("h", 14, 1.5), ("a", 3, 6.0), ("s", 21, 7.0), ("a", 14, 8.0), ("s", 11, 8.5),
            ("h", 9, 2.5), ("s2", 24, 1.0), ("a", 33, 9.0), ("s", 1, 0.25), ("a", 25, 10.0), ("h", 31, 3.5),
            ("s2", 26, 2.0), ("a", 44, 11.0), ("s", 60, 12.0),
        ];
        // Reads input[from..to], committing every `every` reads: returns what the last commit covered.
        struct Owner {
            windows: PartitionWindows,
            pending: Vec<Aggregate>,
            pending_late: usize,
        }
        let read = |owner: &mut Owner, offset: usize| {
            let (key, t, v) = input[offset];
            // Keyed as the processor keys points: by the series key, which a restore derives again.
            let series_key = series(key).key();
            if let Outcome::Late { .. } = owner.windows.push(&series_key, || series(key), mixed_kind(key), t * S, v, offset as i64) {
                owner.pending_late += 1;
            }
            owner.pending.extend(owner.windows.close_ready());
        };
        let (mut whole, mut whole_late) = (Vec::new(), 0);
        let mut uninterrupted = Owner { windows: fresh(), pending: Vec::new(), pending_late: 0 };
        for offset in 0..input.len() {
            read(&mut uninterrupted, offset);
        }
        whole.append(&mut uninterrupted.pending);
        whole_late += uninterrupted.pending_late;
        assert!(whole_late >= 2, "the data has late points");
        let merged = |a: &Aggregate| a.series.as_ref().unwrap().metric == "s" && stats(a).end_ns - stats(a).start_ns > 2 * GAP;
        assert!(whole.iter().any(merged), "two sessions joined by a point between them");

        // Commit every `every` reads; crash after `crash` reads (losing what the open transaction held),
        // restore from the last commit, and read on to the end, committing at the end.
        // Whether the n-th commit tombstones closed windows: always, never, every other one.
        type Mode = (&'static str, fn(usize) -> Tombstones);
        let modes: [Mode; 3] = [
            ("all", |_| Tombstones::All),
            ("later", |_| Tombstones::Later),
            ("alternating", |n| if n % 2 == 0 { Tombstones::All } else { Tombstones::Later }),
        ];
        for (every, crash) in (1..=4).flat_map(|every| (0..input.len()).map(move |crash| (every, crash))) {
            for (mode, tombstones) in modes {
                let case = format!("commit every {every}, crash after {crash} reads, tombstones {mode}");
                let mut changelog = BTreeMap::new();
                let (mut committed, mut late) = (Vec::new(), 0);
                let mut checkpoint = Checkpoint { next_offset: 0, max_event_ns: None, changelog_end: 0 };
                let mut owner = Owner { windows: fresh(), pending: Vec::new(), pending_late: 0 };
                for offset in 0..crash {
                    read(&mut owner, offset);
                    if (offset + 1) % every == 0 {
                        apply(&mut changelog, owner.windows.take_changes(tombstones(offset / every)));
                        checkpoint = owner.windows.checkpoint();
                        committed.append(&mut owner.pending);
                        late += std::mem::take(&mut owner.pending_late);
                    }
                }
                let states = changelog.clone();
                let windows = PartitionWindows::restore(LATENESS, SketchSpec::default(), checkpoint, states).unwrap();
                let mut owner = Owner { windows, pending: Vec::new(), pending_late: 0 };
                for offset in checkpoint.next_offset as usize..input.len() {
                    read(&mut owner, offset);
                }
                apply(&mut changelog, owner.windows.take_changes(Tombstones::All));
                committed.append(&mut owner.pending);
                late += owner.pending_late;
                assert_eq!(committed, whole, "{case}");
                assert_eq!(late, whole_late, "{case}");
                let open: Vec<String> = changelog.keys().cloned().collect();
                assert_eq!(open.len(), owner.windows.open_windows(), "the changelog holds exactly the open windows ({case}): {open:?}");
            }
        }
    }

    /// The naive reference for one series' sessions: sort the points, cut wherever two neighbours are at
    /// least a gap apart.
    fn reference_sessions(points: &[(i64, f64)], gap: i64) -> Vec<(i64, i64, u64, f64)> {
        let mut sorted = points.to_vec();
        sorted.sort_by_key(|p| p.0);
        let mut sessions: Vec<(i64, i64, u64, f64)> = Vec::new();
        for (ts, v) in sorted {
            match sessions.last_mut() {
                Some(last) if ts < last.1 => {
                    last.1 = last.1.max(ts + gap);
                    last.2 += 1;
                    last.3 += v;
                }
                _ => sessions.push((ts, ts + gap, 1, v)),
            }
        }
        sessions
    }

    fn shuffle<T>(items: &mut [T], seed: u64) {
        let mut state = seed | 1;
        for i in (1..items.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            items.swap(i, (state % (i as u64 + 1)) as usize);
        }
    }

    /// Runs `points` of series `x` (all within the lateness of each other) then a far point that closes
    /// every window.
    fn run_all(kind: WindowKind, points: &[(i64, f64)]) -> Vec<Aggregate> {
        let mut w = PartitionWindows::new(100 * S, SketchSpec::default());
        for (i, &(ts, v)) in points.iter().enumerate() {
            assert_eq!(w.push("x", || series("x"), kind, ts, v, i as i64), Outcome::Accepted);
        }
        w.push("y", || series("y"), kind, 1_000 * S, 0.0, points.len() as i64);
        let mut closed = w.close_ready();
        closed.sort_by_key(|a| (stats(a).start_ns, stats(a).end_ns));
        closed
    }

    proptest::proptest! {
        /// Sessions equal the naive reference, whatever the arrival order.
        #[test]
        fn sessions_match_the_reference_in_any_order(
            points in proptest::collection::vec((0i64..60_000, -400i32..400), 1..60),
            gap_ms in 1i64..5_000,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut points: Vec<(i64, f64)> = points.into_iter().map(|(ms, v)| (ms * 1_000_000, f64::from(v) / 4.0)).collect();
            let expected = reference_sessions(&points, gap_ms * 1_000_000);
            shuffle(&mut points, seed);
            let got = bounds(&run_all(WindowKind::Session { gap_ns: gap_ms * 1_000_000 }, &points));
            proptest::prop_assert_eq!(got, expected);
        }

        /// Any order of input within the lateness gives the same windows of every kind, sketches included.
        #[test]
        fn the_arrival_order_within_the_lateness_does_not_matter(
            points in proptest::collection::vec((0i64..60_000, -400i32..400), 1..60),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let points: Vec<(i64, f64)> = points.into_iter().map(|(ms, v)| (ms * 1_000_000, f64::from(v) / 4.0)).collect();
            let mut shuffled = points.clone();
            shuffle(&mut shuffled, seed);
            for kind in [TUMBLING, WindowKind::Hopping { size_ns: 20 * S, advance_ns: 5 * S }, SESSION] {
                let (a, b) = (run_all(kind, &points), run_all(kind, &shuffled));
                proptest::prop_assert_eq!(a.len(), b.len());
                for (a, b) in a.iter().zip(&b) {
                    let (x, y) = (stats(a), stats(b));
                    proptest::prop_assert_eq!(
                        (x.start_ns, x.end_ns, x.count, x.sum, x.min, x.max, x.first_ns, x.last_ns),
                        (y.start_ns, y.end_ns, y.count, y.sum, y.min, y.max, y.first_ns, y.last_ns)
                    );
                    proptest::prop_assert_eq!(&x.quantiles, &y.quantiles);
                    proptest::prop_assert_eq!(&x.sketch, &y.sketch, "sketch bins are counts");
                    let near = |p: Option<f64>, q: Option<f64>| match (p, q) {
                        (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0),
                        (p, q) => p == q,
                    };
                    proptest::prop_assert!(near(x.stddev, y.stddev) && near(x.gradient_per_second, y.gradient_per_second));
                }
            }
        }
    }
}
