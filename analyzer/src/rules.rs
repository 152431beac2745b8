//! Alert rules and their lifecycle, evaluated in event time on closed windows. Pure, no IO.
//!
//! A rule's condition is a comparison of a window's value with a level: a threshold on a statistic of
//! the window, an anomaly score, or a forecast. Per (rule, series) an alert moves
//! inactive → pending → firing → resolved: pending from the first window whose condition holds, firing
//! once it has held for the rule's `for` duration, and, once firing, it holds against the `reset`
//! level (hysteresis) and resolves only when the condition has stayed false for `keep_firing_for`
//! (flap damping). A series that stops reporting follows the rule's no-data policy instead of
//! resolving by silence. Only changes of state are reported.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a value is compared with a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtOrAbove,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtOrBelow,
}

impl Comparison {
    pub fn holds(self, value: f64, level: f64) -> bool {
        match self {
            Self::Above => value > level,
            Self::AtOrAbove => value >= level,
            Self::Below => value < level,
            Self::AtOrBelow => value <= level,
        }
    }

    fn upward(self) -> bool {
        matches!(self, Self::Above | Self::AtOrAbove)
    }
}

/// What a rule compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A statistic of the window (`field`) against `threshold`.
    #[default]
    Threshold,
    /// The window's anomaly score against `score`.
    Anomaly,
    /// The series' forecast `horizon` ahead (by `model`) against `threshold`.
    Forecast,
}

/// The statistic of a window a threshold rule compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    #[default]
    Mean,
    Min,
    Max,
    Sum,
    Count,
}

/// The trend model of a forecast rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForecastWith {
    #[default]
    Regression,
    Holt,
}

/// What happens to an alert whose series stops reporting for `no_data_after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// The alert stays as it was until data returns.
    #[default]
    Keep,
    /// The alert becomes a no-data alert.
    Alert,
    /// A pending or firing alert ends.
    Resolve,
}

/// An alert rule on the series of one metric (and optionally only those with some tag values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; part of every alert id.
    pub name: String,
    pub metric: String,
    /// Only series with these tag values.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub kind: Kind,
    /// The statistic a threshold rule compares.
    #[serde(default)]
    pub field: Field,
    /// One of `>`, `>=`, `<`, `<=` (threshold and forecast rules).
    pub op: Option<Comparison>,
    pub threshold: Option<f64>,
    /// Once firing, the alert holds while the value compares so with this level (hysteresis); the
    /// threshold by default. On the inner side of the threshold: below it for `>`, above for `<`.
    pub reset: Option<f64>,
    /// An anomaly rule's level, in (0, 1]: it holds while a window's score is at least this.
    pub score: Option<f64>,
    /// How far ahead a forecast rule looks.
    #[serde(default, with = "humantime_serde::option")]
    pub horizon: Option<Duration>,
    #[serde(default)]
    pub model: ForecastWith,
    /// How long (event time) the condition must hold before the alert fires; pending meanwhile.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// How long the condition must stay false before a firing alert resolves: flap damping.
    #[serde(default, with = "humantime_serde")]
    pub keep_firing_for: Duration,
    #[serde(default)]
    pub no_data: NoData,
    /// Event time without a window after which the no-data policy applies; required unless the
    /// policy is `keep`.
    #[serde(default, with = "humantime_serde::option")]
    pub no_data_after: Option<Duration>,
}

impl Rule {
    /// A threshold rule on window means, firing at once and resolving at once.
    pub fn threshold(name: &str, metric: &str, op: Comparison, threshold: f64) -> Self {
        Self {
            name: name.to_owned(),
            metric: metric.to_owned(),
            tags: BTreeMap::new(),
            kind: Kind::Threshold,
            field: Field::Mean,
            op: Some(op),
            threshold: Some(threshold),
            reset: None,
            score: None,
            horizon: None,
            model: ForecastWith::Regression,
            for_: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            no_data: NoData::Keep,
            no_data_after: None,
        }
    }

    /// A digest of the whole definition (FNV-1a over its JSON), stable across builds, to tell whether a
    /// checkpointed alert belongs to this very rule.
    pub fn fingerprint(&self) -> u64 {
        let text = serde_json::to_string(self).unwrap_or_default();
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
    }

    /// What is wrong with the rule, by field name.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: &str| {
            if !ok {
                problems.push((field, message.to_owned()));
            }
        };
        check(!self.name.is_empty(), "name", "must not be empty");
        check(!self.name.contains('/'), "name", "must not contain '/' (alert ids are <rule>/<series>)");
        check(!self.metric.is_empty(), "metric", "must not be empty");
        let compares = matches!(self.kind, Kind::Threshold | Kind::Forecast);
        check(!compares || self.op.is_some(), "op", "is required for this kind of rule: one of >, >=, <, <=");
        check(!compares || self.threshold.is_some_and(f64::is_finite), "threshold", "must be a finite number");
        check(compares || self.op.is_none() && self.threshold.is_none(), "op", "is only for threshold and forecast rules");
        if let (Some(op), Some(threshold), Some(reset)) = (self.op, self.threshold, self.reset) {
            let inside = if op.upward() { reset <= threshold } else { reset >= threshold };
            check(reset.is_finite() && inside, "reset", "must be a finite number on the inner side of the threshold");
        }
        check(compares || self.reset.is_none(), "reset", "is only for threshold and forecast rules");
        match self.kind {
            Kind::Anomaly => check(self.score.is_some_and(|s| s > 0.0 && s <= 1.0), "score", "must be in (0, 1]"),
            _ => check(self.score.is_none(), "score", "is only for anomaly rules"),
        }
        match self.kind {
            Kind::Forecast => check(self.horizon.is_some(), "horizon", "is required for a forecast rule"),
            _ => check(self.horizon.is_none(), "horizon", "is only for forecast rules"),
        }
        check(self.no_data == NoData::Keep || self.no_data_after.is_some_and(|d| !d.is_zero()), "no_data_after", "must be a positive duration for this no_data policy");
        problems
    }

    /// Whether the rule watches series `metric` with `tags`.
    pub fn matches<'a>(&self, metric: &str, mut tag: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.metric == metric && self.tags.iter().all(|(name, value)| tag(name) == Some(value.as_str()))
    }

    /// The level the condition compares with: the threshold, or the anomaly score.
    pub fn level(&self) -> f64 {
        match self.kind {
            Kind::Anomaly => self.score.unwrap_or(1.0),
            Kind::Threshold | Kind::Forecast => self.threshold.unwrap_or(f64::NAN),
        }
    }

    /// Whether `value` meets the condition; `firing` compares with the reset level.
    fn holds(&self, value: f64, firing: bool) -> bool {
        match self.kind {
            Kind::Anomaly => value >= self.level(),
            Kind::Threshold | Kind::Forecast => {
                let level = if firing { self.reset.unwrap_or(self.level()) } else { self.level() };
                self.op.is_some_and(|op| op.holds(value, level))
            }
        }
    }
}

/// The states an alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// The condition holds, not yet for `for`.
    Pending,
    Firing,
    /// A firing alert ended.
    Resolved,
    /// A pending alert's condition stopped holding before it fired.
    Inactive,
    /// The series stopped reporting (policy `alert`).
    NoData,
}

/// An alert's state changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The rule's index in the evaluator.
    pub rule: usize,
    /// The series key.
    pub key: String,
    pub state: State,
    /// The value compared (the last one seen, for a no-data change).
    pub value: f64,
    /// When the condition began to hold (pending, firing), stopped holding (resolved, inactive) or
    /// when the series' last window ended (no data).
    pub since_ns: i64,
    /// The window that caused the change; for a no-data change, from the end of the last window to
    /// the event time that noticed the silence.
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Where one (rule, series) alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Phase {
    Inactive,
    Pending { since_ns: i64 },
    /// `clear_since_ns`: when the condition stopped holding, while `keep_firing_for` keeps it firing.
    Firing { since_ns: i64, clear_since_ns: Option<i64> },
    NoData,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    phase: Phase,
    /// The newest window evaluated: older or repeated windows do not evaluate again.
    last_start_ns: i64,
    last_end_ns: i64,
    last_value: f64,
    /// The no-data policy was applied and no window came since.
    silent: bool,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// An alert's state as a checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAlert {
    pub rule: String,
    pub fingerprint: u64,
    pub state: AlertState,
}

/// A rule and the alert state of every series it watches.
#[derive(Debug, Clone)]
struct Watch {
    rule: Rule,
    /// `rule.fingerprint()`, computed once: every checkpoint and restore of an alert compares it.
    fingerprint: u64,
    alerts: HashMap<String, AlertState>,
}

impl Watch {
    fn new(rule: Rule) -> Self {
        Self { fingerprint: rule.fingerprint(), rule, alerts: HashMap::new() }
    }

    /// Evaluates the rule (number `rule`) for series `key` on the window `[start_ns, end_ns)` whose compared value
    /// is `value` (none: the rule cannot say yet, as a forecast without enough windows; the window
    /// still counts as data). Returns the change of state, if any.
    fn evaluate(&mut self, rule: usize, key: &str, start_ns: i64, end_ns: i64, value: Option<f64>) -> Option<Change> {
        let r = &self.rule;
        let alert = match self.alerts.get_mut(key) {
            Some(alert) if start_ns <= alert.last_start_ns => return None,
            Some(alert) => alert,
            None => self.alerts.entry(key.to_owned()).or_insert(AlertState {
                phase: Phase::Inactive,
                last_start_ns: start_ns,
                last_end_ns: end_ns,
                last_value: f64::NAN,
                silent: false,
            }),
        };
        alert.last_start_ns = start_ns;
        alert.last_end_ns = end_ns;
        alert.silent = false;
        let value = value?;
        alert.last_value = value;
        let change = |state: State, since_ns: i64| Change { rule, key: key.to_owned(), state, value, since_ns, start_ns, end_ns };
        let (for_ns, keep_ns) = (nanos(r.for_), nanos(r.keep_firing_for));
        match alert.phase {
            Phase::Inactive | Phase::NoData | Phase::Pending { .. } if r.holds(value, false) => {
                let since_ns = match alert.phase {
                    Phase::Pending { since_ns } => since_ns,
                    _ => start_ns,
                };
                let was = alert.phase;
                if end_ns.saturating_sub(since_ns) >= for_ns {
                    alert.phase = Phase::Firing { since_ns, clear_since_ns: None };
                    Some(change(State::Firing, since_ns))
                } else {
                    alert.phase = Phase::Pending { since_ns };
                    (!matches!(was, Phase::Pending { .. })).then(|| change(State::Pending, since_ns))
                }
            }
            Phase::Inactive => None,
            Phase::NoData => {
                alert.phase = Phase::Inactive;
                Some(change(State::Resolved, start_ns))
            }
            Phase::Pending { .. } => {
                alert.phase = Phase::Inactive;
                Some(change(State::Inactive, start_ns))
            }
            Phase::Firing { since_ns, clear_since_ns } => {
                if r.holds(value, true) {
                    alert.phase = Phase::Firing { since_ns, clear_since_ns: None };
                    return None;
                }
                let clear_ns = clear_since_ns.unwrap_or(start_ns);
                if end_ns.saturating_sub(clear_ns) >= keep_ns {
                    alert.phase = Phase::Inactive;
                    Some(change(State::Resolved, clear_ns))
                } else {
                    alert.phase = Phase::Firing { since_ns, clear_since_ns: Some(clear_ns) };
                    None
                }
            }
        }
    }

}

/// Every rule and its alerts.
#[derive(Debug, Default)]
pub struct Evaluator {
    watches: Vec<Watch>,
    /// Indices of the rules on each metric.
    by_metric: HashMap<String, Vec<usize>>,
}

impl Evaluator {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self::of(rules.into_iter().map(Watch::new).collect())
    }

    fn of(watches: Vec<Watch>) -> Self {
        let mut by_metric: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, watch) in watches.iter().enumerate() {
            by_metric.entry(watch.rule.metric.clone()).or_default().push(i);
        }
        Self { watches, by_metric }
    }

    /// The state of every alert of series `key`, for a checkpoint: each with its rule's name and
    /// fingerprint, so that a restore gives it back only to the same rule.
    pub fn alerts_of(&self, key: &str) -> Vec<SavedAlert> {
        self.watches
            .iter()
            .filter_map(|w| w.alerts.get(key).map(|state| SavedAlert { rule: w.rule.name.clone(), fingerprint: w.fingerprint, state: *state }))
            .collect()
    }

    /// Gives a checkpointed alert of series `key` back to its rule, if that rule is still the same;
    /// returns whether it was.
    pub fn restore_alert(&mut self, key: &str, saved: SavedAlert) -> bool {
        match self.watches.iter_mut().find(|w| w.rule.name == saved.rule && w.fingerprint == saved.fingerprint) {
            Some(watch) => {
                watch.alerts.insert(key.to_owned(), saved.state);
                true
            }
            None => false,
        }
    }

    /// Drops every alert of series `key` (its partition went to another instance).
    pub fn forget(&mut self, key: &str) {
        for watch in &mut self.watches {
            watch.alerts.remove(key);
        }
    }

    /// Replaces the rules (a reload). A rule kept exactly as it was keeps the state of its alerts; a
    /// rule changed under the same name starts afresh, as does a new one; a removed rule's alerts are
    /// forgotten. Returns how many rules kept their state.
    pub fn replace(&mut self, rules: Vec<Rule>) -> usize {
        let mut old: HashMap<String, Watch> = self.watches.drain(..).map(|w| (w.rule.name.clone(), w)).collect();
        let mut kept = 0;
        let watches = rules
            .into_iter()
            .map(|rule| match old.remove(&rule.name) {
                Some(watch) if watch.rule == rule => {
                    kept += 1;
                    watch
                }
                _ => Watch::new(rule),
            })
            .collect();
        *self = Self::of(watches);
        kept
    }

    /// Evaluates every rule watching series `key` (of `metric`, with tag values `tag`) on the window
    /// `[start_ns, end_ns)`, each on the value `value_of` gives for it.
    pub fn window<'a>(
        &mut self,
        metric: &str,
        tag: impl Fn(&str) -> Option<&'a str> + Copy,
        key: &str,
        (start_ns, end_ns): (i64, i64),
        mut value_of: impl FnMut(&Rule) -> Option<f64>,
    ) -> Vec<Change> {
        let Some(indices) = self.by_metric.get(metric) else { return Vec::new() };
        let mut changes = Vec::new();
        for &index in indices {
            let Some(watch) = self.watches.get_mut(index) else { continue };
            if watch.rule.matches(metric, tag) {
                let value = value_of(&watch.rule);
                changes.extend(watch.evaluate(index, key, start_ns, end_ns, value));
            }
        }
        changes
    }

    pub fn rules(&self) -> impl ExactSizeIterator<Item = &Rule> {
        self.watches.iter().map(|w| &w.rule)
    }

    pub fn rule(&self, index: usize) -> Option<&Rule> {
        self.watches.get(index).map(|w| &w.rule)
    }

    /// Event time has reached `now_ns` for the series `owned` accepts: applies the no-data policy to
    /// every alert of those series that has had no window for its rule's `no_data_after`. Changes come
    /// in rule, then series key, order.
    pub fn advance(&mut self, now_ns: i64, owned: impl Fn(&str) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        for (rule, watch) in self.watches.iter_mut().enumerate() {
            let (Some(after), policy) = (watch.rule.no_data_after, watch.rule.no_data) else { continue };
            if policy == NoData::Keep {
                continue;
            }
            let after = nanos(after);
            let start = changes.len();
            for (key, alert) in &mut watch.alerts {
                if alert.silent || now_ns.saturating_sub(alert.last_end_ns) < after || !owned(key) {
                    continue;
                }
                alert.silent = true;
                let state = match (policy, alert.phase) {
                    (NoData::Alert, Phase::NoData) | (NoData::Resolve, Phase::Inactive | Phase::NoData) | (NoData::Keep, _) => continue,
                    (NoData::Alert, _) => {
                        alert.phase = Phase::NoData;
                        State::NoData
                    }
                    (NoData::Resolve, Phase::Pending { .. }) => {
                        alert.phase = Phase::Inactive;
                        State::Inactive
                    }
                    (NoData::Resolve, Phase::Firing { .. }) => {
                        alert.phase = Phase::Inactive;
                        State::Resolved
                    }
                };
                changes.push(Change {
                    rule,
                    key: key.clone(),
                    state,
                    value: alert.last_value,
                    since_ns: alert.last_end_ns,
                    start_ns: alert.last_end_ns,
                    end_ns: now_ns,
                });
            }
            changes[start..].sort_by(|a, b| a.key.cmp(&b.key));
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn rule(toml_body: &str) -> Rule {
        let rule: Rule = toml::from_str(&format!("name = \"r\"\nmetric = \"temp\"\n{toml_body}")).unwrap();
        assert_eq!(rule.problems(), Vec::new());
        rule
    }

    /// The change of the evaluator's only rule on a window of series `key` of metric "temp".
    fn evaluate(e: &mut Evaluator, key: &str, start: i64, end: i64, value: f64) -> Option<Change> {
        let changes = e.window("temp", |_| None, key, (start, end), |_| Some(value));
        assert!(changes.len() <= 1);
        changes.into_iter().next()
    }

    /// Feeds 10 s windows with these values to a rule for series "k"; returns (window index, state).
    fn run(rule: Rule, values: &[f64]) -> Vec<(usize, State)> {
        let mut e = Evaluator::new(vec![rule]);
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let start = i as i64 * 10 * S;
            out.extend(evaluate(&mut e, "k", start, start + 10 * S, *v).map(|c| (i, c.state)));
        }
        out
    }

    #[test]
    fn only_state_changes_are_reported() {
        let hot = rule("op = \">\"\nthreshold = 30.0");
        assert_eq!(Rule { name: "r".into(), ..Rule::threshold("x", "temp", Comparison::Above, 30.0) }, hot);
        assert_eq!(run(hot, &[20.0, 31.0, 35.0, 30.0, 40.0]), [(1, State::Firing), (3, State::Resolved), (4, State::Firing)]);
    }

    #[test]
    fn for_holds_pending_until_the_condition_lasted() {
        // 30 s: fires at the end of the third window in a row.
        let hot = rule("op = \">\"\nthreshold = 30.0\nfor = \"30s\"");
        let changes = run(hot, &[31.0, 31.0, 20.0, 31.0, 31.0, 31.0, 31.0, 20.0]);
        assert_eq!(changes, [(0, State::Pending), (2, State::Inactive), (3, State::Pending), (5, State::Firing), (7, State::Resolved)]);
    }

    #[test]
    fn hysteresis_resolves_only_past_the_reset_level() {
        let hot = rule("op = \">\"\nthreshold = 30.0\nreset = 25.0");
        assert_eq!(run(hot, &[31.0, 28.0, 26.0, 31.0, 25.0, 31.0]), [(0, State::Firing), (4, State::Resolved), (5, State::Firing)]);
    }

    #[test]
    fn keep_firing_for_damps_a_flapping_series() {
        let values: Vec<f64> = (0..20).map(|i| if i % 2 == 0 { 31.0 } else { 20.0 }).collect();
        let undamped = run(rule("op = \">\"\nthreshold = 30.0"), &values);
        assert_eq!(undamped.len(), 20, "fires and resolves every window: {undamped:?}");
        let damped = rule("op = \">\"\nthreshold = 30.0\nkeep_firing_for = \"30s\"");
        let mut settled = values.clone();
        settled.extend([20.0, 20.0, 20.0]);
        // Fires once; resolves after three clear windows (30 s) in a row, since the clear run began.
        assert_eq!(run(damped, &settled), [(0, State::Firing), (21, State::Resolved)]);
    }

    #[test]
    fn anomaly_and_forecast_rules_compare_their_value() {
        let odd = rule("kind = \"anomaly\"\nscore = 0.99\nfor = \"20s\"");
        assert_eq!(run(odd, &[0.5, 0.995, 0.999, 0.2]), [(1, State::Pending), (2, State::Firing), (3, State::Resolved)]);
        let full = rule("kind = \"forecast\"\nmodel = \"holt\"\nhorizon = \"1h\"\nop = \">=\"\nthreshold = 100.0");
        assert_eq!(full.model, ForecastWith::Holt);
        assert_eq!(run(full, &[90.0, 100.0, 99.0]), [(1, State::Firing), (2, State::Resolved)]);
    }

    #[test]
    fn replays_and_older_windows_do_not_evaluate() {
        let mut e = Evaluator::new(vec![rule("op = \">\"\nthreshold = 30.0")]);
        assert_eq!(evaluate(&mut e, "k", 10, 20, 40.0).map(|c| c.state), Some(State::Firing));
        assert_eq!(evaluate(&mut e, "k", 10, 20, 40.0), None);
        assert_eq!(evaluate(&mut e, "k", 0, 10, 10.0), None, "an older window cannot resolve a newer state");
        assert_eq!(evaluate(&mut e, "other", 0, 10, 10.0), None, "series are independent");
    }

    #[test]
    fn silence_follows_the_no_data_policy() {
        let policy = |p: &str| rule(&format!("op = \">\"\nthreshold = 30.0\nno_data = \"{p}\"\nno_data_after = \"1m\""));
        for (p, want) in [("alert", Some(State::NoData)), ("resolve", Some(State::Resolved)), ("keep", None)] {
            let mut e = Evaluator::new(vec![policy(p)]);
            assert_eq!(evaluate(&mut e, "k", 0, 10 * S, 40.0).map(|c| c.state), Some(State::Firing));
            assert_eq!(e.advance(69 * S, |_| true), [], "{p}: 59 s of silence is not yet a minute");
            let changes = e.advance(70 * S, |_| true);
            assert_eq!(changes.first().map(|c| c.state), want, "{p}");
            assert_eq!(e.advance(200 * S, |_| true), [], "{p}: the policy applies once per silence");
            // Data returns, below the threshold: a no-data alert resolves; a kept firing one too.
            let back = evaluate(&mut e, "k", 200 * S, 210 * S, 10.0).map(|c| c.state);
            assert_eq!(back, if p == "resolve" { None } else { Some(State::Resolved) }, "{p}");
        }
        assert_eq!(Evaluator::new(vec![rule("op = \">\"\nthreshold = 30.0")]).advance(i64::MAX, |_| true), []);
    }

    #[test]
    fn no_data_changes_come_in_key_order() {
        let mut e = Evaluator::new(vec![rule("op = \">\"\nthreshold = 30.0\nno_data = \"alert\"\nno_data_after = \"10s\"")]);
        for key in ["c", "a", "b"] {
            evaluate(&mut e, key, 0, 10 * S, 1.0);
        }
        assert_eq!(e.advance(20 * S, |key| key == "x"), [], "none of these series is owned");
        let keys: Vec<String> = e.advance(20 * S, |key| key != "b").into_iter().map(|c| c.key).collect();
        assert_eq!(keys, ["a", "c"]);
    }

    #[test]
    fn a_reload_keeps_the_alerts_of_unchanged_rules_only() {
        let hot = rule("op = \">\"\nthreshold = 30.0");
        let cold = Rule { name: "cold".into(), ..rule("op = \"<\"\nthreshold = 0.0") };
        let mut e = Evaluator::new(vec![hot.clone(), cold.clone()]);
        let fire = |e: &mut Evaluator, start: i64, value: f64| {
            e.window("temp", |_| None, "k", (start, start + 10), |_| Some(value)).into_iter().map(|c| (c.rule, c.state)).collect::<Vec<_>>()
        };
        assert_eq!(fire(&mut e, 0, 40.0), [(0, State::Firing)]);
        // The same hot rule, now second; cold changed; a new rule first.
        let warm = Rule { name: "warm".into(), ..rule("op = \">\"\nthreshold = 20.0") };
        let colder = Rule { threshold: Some(-10.0), ..cold };
        assert_eq!(e.replace(vec![warm, hot.clone(), colder]), 1);
        // hot is still firing (no new change at 40); warm is new and fires.
        assert_eq!(fire(&mut e, 10, 40.0), [(0, State::Firing)]);
        assert_eq!(fire(&mut e, 20, 10.0), [(0, State::Resolved), (1, State::Resolved)]);
        let changed = Rule { threshold: Some(35.0), ..hot };
        assert_eq!(e.replace(vec![changed]), 0);
        assert_eq!(e.rules().len(), 1);
        assert_eq!(fire(&mut e, 30, 40.0), [(0, State::Firing)], "a changed rule starts afresh");
    }

    #[test]
    fn rules_select_series_by_metric_and_tags() {
        let r = rule("op = \">\"\nthreshold = 1.0\ntags = { host = \"a\" }");
        let tags = |host: &'static str| move |name: &str| (name == "host").then_some(host);
        assert!(r.matches("temp", tags("a")));
        assert!(!r.matches("temp", tags("b")));
        assert!(!r.matches("cpu", tags("a")));
    }

    #[test]
    fn bad_rules_name_their_field() {
        let problems = |body: &str| {
            let rule: Rule = toml::from_str(&format!("name = \"r/x\"\nmetric = \"\"\n{body}")).unwrap();
            rule.problems().into_iter().map(|(field, _)| field).collect::<Vec<_>>()
        };
        assert_eq!(problems("op = \">\""), ["name", "metric", "threshold"]);
        assert_eq!(problems("kind = \"anomaly\"\nscore = 2.0\nhorizon = \"1h\""), ["name", "metric", "score", "horizon"]);
        assert_eq!(problems("kind = \"forecast\"\nop = \"<\"\nthreshold = 5.0\nreset = 4.0\nno_data = \"alert\""), [
            "name",
            "metric",
            "reset",
            "horizon",
            "no_data_after"
        ]);
    }
}
