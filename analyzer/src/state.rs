//! The analyzer's in-memory state: the models of every series and the rule evaluator, shared by the
//! consumer (which updates it) and the gRPC service (which reads it). Turns rule changes into `Alert`
//! messages.

use std::collections::{HashMap, VecDeque};

use proto::v1::{Aggregate, Alert, AlertState, Point, Series, WindowStats};

use crate::config::Model;
use serde::{Deserialize, Serialize};

use crate::model::{Detector, DetectorSpec, Forecast, Holt, NoForecast, Regression};
use crate::rules::{Change, Evaluator, Field, ForecastWith, Kind, Rule, SavedAlert, State};

/// What an analysis reads: windows (the aggregates topic) of every metric but those modelled per
/// point, or the raw points of those (the points topic). Each series is modelled by exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Aggregates,
    Points,
}

/// Which trend model a forecast comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrendModel {
    Regression,
    Holt,
}

/// A window's anomaly score, as kept for `AnomalyScores`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub start_ns: i64,
    pub end_ns: i64,
    pub mean: f64,
    pub score: f64,
}

/// Everything the analyzer keeps about one series; its size does not grow with the series' history.
#[derive(Debug, Clone)]
pub struct SeriesModels {
    series: Series,
    /// The input partition the series' windows come from.
    partition: i32,
    regression: Regression,
    holt: Holt,
    detector: Detector,
    /// The latest `Model::scores` windows' scores, oldest first.
    scores: VecDeque<Scored>,
    /// The start of the latest window learned.
    latest_start_ns: Option<i64>,
}

impl SeriesModels {
    pub fn forecast(&self, model: TrendModel, horizon_ns: i64, confidence: f64) -> Result<Forecast, NoForecast> {
        match model {
            TrendModel::Regression => self.regression.forecast(horizon_ns, confidence),
            TrendModel::Holt => self.holt.forecast(horizon_ns, confidence),
        }
    }

    /// The kept scores of windows starting in `[start_ns, end_ns)`.
    pub fn scores(&self, start_ns: i64, end_ns: i64) -> impl Iterator<Item = &Scored> {
        self.scores.iter().filter(move |s| s.start_ns >= start_ns && s.start_ns < end_ns)
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }
}

/// The format of a series' checkpoint, its first byte; a build refuses another.
const CHECKPOINT_VERSION: u8 = 1;

/// A series' checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    metric: String,
    tags: Vec<(String, String)>,
    regression: Regression,
    holt: Holt,
    /// The detector's settings when saved (as JSON: postcard cannot read a tagged enum back): a
    /// detector configured otherwise since starts afresh.
    detector_spec: String,
    detector: Detector,
    latest_start_ns: Option<i64>,
    alerts: Vec<SavedAlert>,
}

fn spec_text(spec: &DetectorSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

/// What folding in one aggregate did.
#[derive(Debug, Default)]
pub struct Observed {
    /// The window's anomaly score; none for a replayed window (or an aggregate without a series).
    pub scored: Option<Scored>,
    /// The alert changes, in the order they are published.
    pub alerts: Vec<Alert>,
    /// The series whose checkpoint changed: the one observed, and any whose alert changed because
    /// the event time moved (a no-data change). Each must be checkpointed with the alerts, or a
    /// restore would publish such a change again.
    pub changed: Vec<String>,
}

/// The probability a forecast rule's interval is computed at (a rule compares the forecast value).
const RULE_CONFIDENCE: f64 = 0.95;

#[derive(Debug)]
pub struct Analysis {
    model: Model,
    series: HashMap<String, SeriesModels>,
    evaluator: Evaluator,
    /// Per input partition, the latest window end seen: the event time by which the no-data policies
    /// of that partition's series are judged. Per partition, so that the judgement depends only on the
    /// partition's order, which a replay (or a backtest in partition and offset order) repeats.
    watermarks: HashMap<i32, i64>,
    input: Input,
}

impl Analysis {
    /// The analysis of windows.
    pub fn new(model: Model, rules: Vec<Rule>) -> Self {
        Self::of(Input::Aggregates, model, rules)
    }

    pub fn of(input: Input, model: Model, rules: Vec<Rule>) -> Self {
        Self { model, series: HashMap::new(), evaluator: Evaluator::new(rules), watermarks: HashMap::new(), input }
    }

    pub fn input(&self) -> Input {
        self.input
    }

    /// Folds in one aggregate read from input partition `partition`; returns the alert changes it
    /// caused, and those of any series of the partition whose silence the event time it brings reveals.
    /// A window of a metric modelled per point is ignored, as is every window in an analysis of points.
    pub fn observe(&mut self, partition: i32, aggregate: &Aggregate) -> Observed {
        let per_point = aggregate.series.as_ref().is_some_and(|s| self.model.points.contains_key(&s.metric));
        if per_point || self.input == Input::Points {
            return Observed::default();
        }
        self.fold(partition, aggregate)
    }

    /// Folds in one window of a series this analysis models.
    fn fold(&mut self, partition: i32, aggregate: &Aggregate) -> Observed {
        let (Some(series), Some(window)) = (&aggregate.series, &aggregate.window) else { return Observed::default() };
        let key = series.key();
        let model = &self.model;
        let models = self.series.entry(key.clone()).or_insert_with(|| SeriesModels {
            series: series.clone(),
            partition,
            regression: Regression::new(model.windows),
            holt: Holt::new(model.holt.alpha, model.holt.beta),
            detector: model.detector_of(&series.metric).build(),
            scores: VecDeque::with_capacity(model.scores.min(64)),
            latest_start_ns: None,
        });
        let (start_ns, end_ns, mean) = (window.start_ns, window.end_ns, window.mean);
        // A window at or before the latest one is a replay: the models already learned it, and the
        // rules evaluated it.
        if models.latest_start_ns.is_some_and(|latest| start_ns <= latest) {
            return Observed::default();
        }
        models.latest_start_ns = Some(start_ns);
        models.regression.observe(start_ns, end_ns, mean);
        models.holt.observe(start_ns, end_ns, mean);
        let score = models.detector.observe(start_ns, mean);
        let scored = Scored { start_ns, end_ns, mean, score };
        if model.scores > 0 {
            if models.scores.len() == model.scores {
                models.scores.pop_front();
            }
            models.scores.push_back(scored);
        }
        let tag = |name: &str| series.tags.get(name).map(String::as_str);
        let mut changes = self.evaluator.window(&series.metric, tag, &key, (start_ns, end_ns), |rule| match rule.kind {
            Kind::Threshold => Some(match rule.field {
                Field::Mean => mean,
                Field::Min => window.min,
                Field::Max => window.max,
                Field::Sum => window.sum,
                Field::Count => window.count as f64,
            }),
            Kind::Anomaly => Some(score),
            Kind::Forecast => {
                let trend = match rule.model {
                    ForecastWith::Regression => TrendModel::Regression,
                    ForecastWith::Holt => TrendModel::Holt,
                };
                let horizon = rule.horizon.map_or(0, |h| i64::try_from(h.as_nanos()).unwrap_or(i64::MAX));
                models.forecast(trend, horizon, RULE_CONFIDENCE).ok().map(|f| f.value)
            }
        });
        let watermark = self.watermarks.entry(partition).or_insert(i64::MIN);
        if end_ns > *watermark {
            *watermark = end_ns;
            let series = &self.series;
            changes.extend(self.evaluator.advance(end_ns, |key| series.get(key).is_some_and(|m| m.partition == partition)));
        }
        let alerts: Vec<Alert> = changes.into_iter().map(|change| self.alert(change)).collect();
        let mut changed = vec![key];
        for alert in &alerts {
            let other = alert.series.as_ref().map(Series::key).filter(|other| !changed.contains(other));
            changed.extend(other);
        }
        Observed { scored: Some(scored), alerts, changed }
    }

    /// Folds in one raw point read from input partition `partition`, as a window of one point
    /// `[t, t + interval)` (`model.points`). A point of a metric modelled per window is ignored, as is
    /// every point in an analysis of windows.
    pub fn observe_point(&mut self, partition: i32, point: &Point) -> Observed {
        let Some(per_point) = self.model.points.get(&point.metric).filter(|_| self.input == Input::Points) else {
            return Observed::default();
        };
        let interval = i64::try_from(per_point.interval.as_nanos()).unwrap_or(i64::MAX);
        let (start_ns, value) = (point.timestamp_ns, point.value);
        let window = WindowStats {
            start_ns,
            end_ns: start_ns.saturating_add(interval),
            count: 1,
            sum: value,
            mean: value,
            min: value,
            max: value,
            first_ns: start_ns,
            last_ns: start_ns,
            ..WindowStats::default()
        };
        let series = Series { metric: point.metric.clone(), tags: point.tags.clone() };
        self.fold(partition, &Aggregate { series: Some(series), window: Some(window) })
    }

    fn alert(&self, change: Change) -> Alert {
        let rule = self.evaluator.rule(change.rule);
        let state = match change.state {
            State::Pending => AlertState::Pending,
            State::Firing => AlertState::Firing,
            State::Resolved => AlertState::Resolved,
            State::Inactive => AlertState::Inactive,
            State::NoData => AlertState::NoData,
        };
        let name = rule.map_or("", |r| r.name.as_str());
        Alert {
            id: format!("{name}/{}", change.key),
            rule: name.to_owned(),
            series: self.series.get(&change.key).map(|m| m.series.clone()),
            state: state as i32,
            value: change.value,
            threshold: rule.map_or(f64::NAN, Rule::level),
            window_start_ns: change.start_ns,
            window_end_ns: change.end_ns,
            since_ns: change.since_ns,
        }
    }

    /// Puts new rules in place (a reload); see `Evaluator::replace`. Returns how many rules kept their
    /// alerts' state.
    pub fn replace_rules(&mut self, rules: Vec<Rule>) -> usize {
        self.evaluator.replace(rules)
    }

    /// The checkpoint of series `key`: everything that restores its models and alerts exactly (not the
    /// scores kept for `AnomalyScores`, which start again after a restore).
    pub fn checkpoint(&self, key: &str) -> Option<Vec<u8>> {
        let m = self.series.get(key)?;
        let saved = Saved {
            metric: m.series.metric.clone(),
            tags: m.series.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            regression: m.regression.clone(),
            holt: m.holt.clone(),
            detector_spec: spec_text(self.model.detector_of(&m.series.metric)),
            detector: m.detector.clone(),
            latest_start_ns: m.latest_start_ns,
            alerts: self.evaluator.alerts_of(key),
        };
        let mut bytes = vec![CHECKPOINT_VERSION];
        bytes.extend(postcard::to_allocvec(&saved).ok()?);
        Some(bytes)
    }

    /// Restores series `key` of input partition `partition` from its checkpoint. A model whose settings
    /// changed since starts afresh, as does an alert whose rule changed; the error names what could not
    /// be read.
    pub fn restore(&mut self, partition: i32, key: &str, bytes: &[u8]) -> Result<(), String> {
        let (version, body) = bytes.split_first().ok_or("an empty checkpoint")?;
        if *version != CHECKPOINT_VERSION {
            return Err(format!("checkpoint version {version}, this build reads {CHECKPOINT_VERSION}"));
        }
        let saved: Saved = postcard::from_bytes(body).map_err(|err| err.to_string())?;
        let model = &self.model;
        let spec = model.detector_of(&saved.metric);
        let models = SeriesModels {
            series: Series { metric: saved.metric.clone(), tags: saved.tags.into_iter().collect() },
            partition,
            regression: if saved.regression.capacity() == Regression::new(model.windows).capacity() { saved.regression } else { Regression::new(model.windows) },
            holt: if saved.holt.params() == (model.holt.alpha, model.holt.beta) { saved.holt } else { Holt::new(model.holt.alpha, model.holt.beta) },
            detector: if saved.detector_spec == spec_text(spec) { saved.detector } else { spec.build() },
            scores: VecDeque::new(),
            latest_start_ns: saved.latest_start_ns,
        };
        self.series.insert(key.to_owned(), models);
        for alert in saved.alerts {
            let rule = alert.rule.clone();
            if !self.evaluator.restore_alert(key, alert) {
                tracing::info!(rule, series = key, "the rule changed or is gone since the checkpoint; its alert starts afresh");
            }
        }
        Ok(())
    }

    /// The event time of input partition `partition`, for a checkpoint.
    pub fn watermark(&self, partition: i32) -> Option<i64> {
        self.watermarks.get(&partition).copied()
    }

    pub fn restore_watermark(&mut self, partition: i32, watermark_ns: i64) {
        self.watermarks.insert(partition, watermark_ns);
    }

    /// Drops every series of input partition `partition` (it went to another instance); returns how many.
    pub fn forget_partition(&mut self, partition: i32) -> usize {
        let keys: Vec<String> = self.series.iter().filter(|(_, m)| m.partition == partition).map(|(k, _)| k.clone()).collect();
        for key in &keys {
            self.series.remove(key);
            self.evaluator.forget(key);
        }
        self.watermarks.remove(&partition);
        keys.len()
    }

    pub fn series(&self, key: &str) -> Option<&SeriesModels> {
        self.series.get(key)
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::{Series, WindowStats};

    use super::*;
    use crate::config::Settings;
    use crate::model::DetectorSpec;

    const S: i64 = 1_000_000_000;

    fn window(metric: &str, i: i64, mean: f64) -> Aggregate {
        let series = Series { metric: metric.to_owned(), tags: [("host".to_owned(), "a".to_owned())].into() };
        Aggregate { series: Some(series), window: Some(WindowStats { start_ns: i * 10 * S, end_ns: (i + 1) * 10 * S, mean, ..Default::default() }) }
    }

    fn analysis(scores: usize) -> Analysis {
        let mut model = Settings::default().model;
        model.scores = scores;
        model.detectors.insert("cpu".to_owned(), DetectorSpec::Mad { windows: 5, warmup: 3 });
        Analysis::new(model, Vec::new())
    }

    #[test]
    fn each_metric_gets_its_detector_and_keeps_its_latest_scores() {
        let mut a = analysis(3);
        for i in 0..5 {
            a.observe(0, &window("cpu", i, i as f64));
            a.observe(0, &window("temp", i, 20.0));
        }
        let cpu = a.series("cpu{host=\"a\"}").unwrap();
        assert_eq!((cpu.detector().name(), a.series("temp{host=\"a\"}").unwrap().detector().name()), ("mad", "ewma"));
        let kept: Vec<i64> = cpu.scores(0, i64::MAX).map(|s| s.start_ns / (10 * S)).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(cpu.scores(30 * S, 40 * S).count(), 1);
        assert!(a.series("cpu{}").is_none());
    }

    #[test]
    fn a_metric_modelled_per_point_is_learned_from_its_points_only() {
        let mut model = Settings::default().model;
        model.points.insert("temp".to_owned(), crate::config::PerPoint { interval: std::time::Duration::from_secs(1) });
        let rules = vec![Rule::threshold("hot", "temp", crate::rules::Comparison::Above, 10.0)];
        let mut points = Analysis::of(Input::Points, model.clone(), rules.clone());
        let mut windows = Analysis::new(model, rules);
        let point = |metric: &str, i: i64| Point {
            metric: metric.to_owned(),
            tags: [("host".to_owned(), "a".to_owned())].into(),
            timestamp_ns: i * S,
            value: i as f64,
        };
        let mut fired = Vec::new();
        for i in 0..20 {
            // A window of temp goes unread by both: the points analysis reads no windows, and the
            // windows analysis none of a metric modelled per point.
            assert!(windows.observe(0, &window("temp", i, 99.0)).scored.is_none());
            assert!(points.observe(0, &window("temp", i, 99.0)).scored.is_none());
            assert!(points.observe_point(0, &point("cpu", i)).scored.is_none());
            let observed = points.observe_point(0, &point("temp", i));
            assert_eq!(observed.scored.map(|s| (s.start_ns, s.end_ns, s.mean)), Some((i * S, (i + 1) * S, i as f64)));
            fired.extend(observed.alerts.iter().map(|a| (i, a.state())));
        }
        // Value i at i seconds: the first point above 10 fires, and the line has slope 1 per second.
        assert_eq!(fired, [(11, AlertState::Firing)]);
        let temp = points.series("temp{host=\"a\"}").unwrap();
        let forecast = temp.forecast(TrendModel::Regression, S, 0.95).unwrap();
        assert_eq!(forecast.windows, 20);
        assert!((forecast.slope_per_second - 1.0).abs() < 1e-9, "{forecast:?}");
        assert!(points.series("cpu{host=\"a\"}").is_none() && windows.series("temp{host=\"a\"}").is_none());
    }

    /// What the consumer does: after each observation, checkpoint the series it names as changed and
    /// the partition's event time. A no-data change of a silent series is in that checkpoint, so a
    /// restore does not publish it again.
    #[test]
    fn a_no_data_change_is_checkpointed_with_its_silent_series() {
        let quiet = Series { metric: "temp".to_owned(), tags: [("host".to_owned(), "quiet".to_owned())].into() };
        let rule = Rule {
            tags: quiet.tags.clone(),
            no_data: crate::rules::NoData::Alert,
            no_data_after: Some(std::time::Duration::from_secs(30)),
            ..Rule::threshold("watched", "temp", crate::rules::Comparison::Above, 30.0)
        };
        let model = Settings::default().model;
        let window = |host: &str, i: i64, mean: f64| Aggregate {
            series: Some(Series { metric: "temp".to_owned(), tags: [("host".to_owned(), host.to_owned())].into() }),
            window: Some(WindowStats { start_ns: i * 10 * S, end_ns: (i + 1) * 10 * S, mean, ..Default::default() }),
        };
        let mut live = Analysis::new(model.clone(), vec![rule.clone()]);
        let mut saved: HashMap<String, Vec<u8>> = HashMap::new();
        let mut published = Vec::new();
        let observe = |analysis: &mut Analysis, saved: &mut HashMap<String, Vec<u8>>, aggregate: &Aggregate| {
            let observed = analysis.observe(0, aggregate);
            for key in &observed.changed {
                saved.insert(key.clone(), analysis.checkpoint(key).unwrap());
            }
            observed.alerts.into_iter().map(|a| (a.state(), a.window_end_ns / (10 * S))).collect::<Vec<_>>()
        };
        // "quiet" is hot for three windows, then silent while "loud" moves event time on.
        for i in 0..8 {
            if i < 3 {
                published.extend(observe(&mut live, &mut saved, &window("quiet", i, 40.0)));
            }
            published.extend(observe(&mut live, &mut saved, &window("loud", i, 10.0)));
        }
        assert_eq!(published, [(AlertState::Firing, 1), (AlertState::NoData, 6)]);
        let mut restored = Analysis::new(model, vec![rule]);
        for (key, bytes) in &saved {
            restored.restore(0, key, bytes).unwrap();
        }
        restored.restore_watermark(0, live.watermark(0).unwrap());
        for i in 8..12 {
            let loud = window("loud", i, 10.0);
            let (a, b) = (observe(&mut live, &mut saved.clone(), &loud), observe(&mut restored, &mut saved, &loud));
            assert_eq!((a, b), (Vec::new(), Vec::new()), "window {i}");
        }
    }

    #[test]
    fn a_restored_analysis_continues_exactly() {
        let rules = vec![
            Rule::threshold("hot", "temp", crate::rules::Comparison::Above, 12.0),
            Rule { keep_firing_for: std::time::Duration::from_secs(30), ..Rule::threshold("damped", "temp", crate::rules::Comparison::Above, 12.0) },
        ];
        let mut model = Settings::default().model;
        model.detectors.insert("cpu".to_owned(), DetectorSpec::Mad { windows: 7, warmup: 3 });
        let mut live = Analysis::new(model.clone(), rules.clone());
        let value = |i: i64| 10.0 + (i % 5) as f64 + if i % 11 == 0 { 9.0 } else { 0.0 };
        for i in 0..40 {
            live.observe(3, &window("temp", i, value(i)));
            live.observe(3, &window("cpu", i, value(i + 2)));
        }
        // A new instance restores both series from their checkpoints, and the partition's event time.
        let mut restored = Analysis::new(model, rules);
        for key in ["temp{host=\"a\"}", "cpu{host=\"a\"}"] {
            restored.restore(3, key, &live.checkpoint(key).unwrap()).unwrap();
        }
        restored.restore_watermark(3, live.watermark(3).unwrap());
        for i in 40..80 {
            for metric in ["temp", "cpu"] {
                let w = window(metric, i, value(i + if metric == "cpu" { 2 } else { 0 }));
                let (a, b) = (live.observe(3, &w), restored.observe(3, &w));
                assert_eq!(a.alerts, b.alerts, "window {i} of {metric}");
                assert_eq!(a.scored, b.scored, "window {i} of {metric}");
            }
        }
        let key = "temp{host=\"a\"}";
        for trend in [TrendModel::Regression, TrendModel::Holt] {
            assert_eq!(live.series(key).unwrap().forecast(trend, S, 0.9), restored.series(key).unwrap().forecast(trend, S, 0.9));
        }
        // A replay of a window learned before the checkpoint changes nothing in the restored one.
        assert!(restored.observe(3, &window("temp", 10, 99.0)).scored.is_none());
        assert_eq!(restored.forget_partition(3), 2);
        assert!(restored.series(key).is_none() && restored.watermark(3).is_none());
        assert!(restored.restore(3, key, &[9, 1, 2]).unwrap_err().starts_with("checkpoint version 9"));
    }

    #[test]
    fn a_replayed_window_is_learned_once() {
        let (mut once, mut twice) = (analysis(10), analysis(10));
        for i in 0..6 {
            let w = window("temp", i, (i * i) as f64);
            once.observe(0, &w);
            twice.observe(0, &w);
            twice.observe(0, &w);
        }
        twice.observe(0, &window("temp", 2, 1000.0));
        let key = "temp{host=\"a\"}";
        for model in [TrendModel::Regression, TrendModel::Holt] {
            let (a, b) = (once.series(key).unwrap().forecast(model, S, 0.9), twice.series(key).unwrap().forecast(model, S, 0.9));
            assert_eq!(a, b, "{model:?}");
        }
        let scores = |a: &Analysis| a.series(key).unwrap().scores(0, i64::MAX).copied().collect::<Vec<_>>();
        assert_eq!(scores(&once), scores(&twice));
        assert_eq!(scores(&once).len(), 6);
    }
}
