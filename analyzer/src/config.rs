//! The analyzer's settings.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::ops::OpsSettings;
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

use crate::model::DetectorSpec;
use crate::rules::Rule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the analyzer gRPC service listens.
    pub grpc: GrpcSettings,
    pub kafka: KafkaSettings,
    /// Consumer group; analyzer instances of one pipeline share it.
    pub group_id: String,
    pub topics: Topics,
    pub model: Model,
    /// Alert rules (threshold, anomaly, forecast), evaluated on every window of their series.
    // An empty list does not survive the defaults layer, hence the serde default.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// A TOML file of further `[[rules]]`, reloaded on SIGHUP and whenever its content changes,
    /// keeping the alerts of unchanged rules; an invalid version is refused and the running rules stay.
    pub rules_file: Option<PathBuf>,
    /// How often the rules file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// How often a transaction commits the alert changes, the checkpoints of the series that changed
    /// and the input offsets. An alert change is visible (on `WatchAlerts`, and to the store) only
    /// once committed, so this bounds how late an alert arrives: 250 ms keeps it well under a second.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Transactional id of this instance: stable across its restarts, so that a restart fences its
    /// former self, and unique among the instances of the group. Defaults to
    /// `runnel-analyzer-<hostname>`.
    pub transactional_id: String,
    /// Deadline of every transactional call and of a partition's restore, and the broker's timeout for
    /// a transaction left open by a crashed instance (which holds back `read_committed` readers until then).
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    pub telemetry: TelemetrySettings,
    /// The operations listener (`/livez`, `/readyz`, `/metrics`) and the drain deadline of a stop.
    pub ops: OpsSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSettings {
    /// Listen address; port 0 lets the OS choose.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Input.
    pub aggregates: TopicSettings,
    /// Input of the metrics modelled per point (`model.points`); read only when there are some.
    pub points: TopicSettings,
    /// Output: one message per alert state change.
    pub alerts: TopicSettings,
    /// The checkpoints of the series, compacted: partition p holds those of aggregates partition p
    /// (created with as many partitions as the aggregates topic; `partitions` is not used).
    pub changelog: TopicSettings,
    /// The same for the series modelled per point: partition p for points partition p.
    pub points_changelog: TopicSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// How many of a series' latest windows the regression line is fitted to.
    pub windows: usize,
    pub holt: HoltSettings,
    /// The anomaly detector of every metric not named in `detectors`.
    pub detector: DetectorSpec,
    /// Detectors by metric name, overriding `detector`.
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorSpec>,
    /// How many of a series' latest anomaly scores `AnomalyScores` can return.
    pub scores: usize,
    /// Metrics whose series are modelled per raw point (read from the points topic by a second
    /// exactly-once loop, in consumer group `<group_id>-points`) rather than per window; their
    /// aggregates are not read. By metric name.
    #[serde(default)]
    pub points: BTreeMap<String, PerPoint>,
}

/// How a metric's raw points are modelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerPoint {
    /// The metric's sampling interval: a point at t is a window `[t, t + interval)` of one point, so
    /// that Holt counts its steps and `no_data_after` and `for` read event time as for windows.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Settings {
    /// The rules that run: those of the settings followed by those of `rules_file`, or every problem
    /// of that file.
    pub fn running_rules(&self) -> Result<Vec<Rule>, String> {
        match &self.rules_file {
            Some(file) => crate::reload::load(&self.rules, file),
            None => Ok(self.rules.clone()),
        }
    }
}

impl Model {
    /// The detector `metric` uses.
    pub fn detector_of(&self, metric: &str) -> &DetectorSpec {
        self.detectors.get(metric).unwrap_or(&self.detector)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoltSettings {
    /// Smoothing of the level, in (0, 1].
    pub alpha: f64,
    /// Smoothing of the trend, in [0, 1].
    pub beta: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings { listen: SocketAddr::from(([127, 0, 0, 1], 50053)) },
            kafka: KafkaSettings::default(),
            group_id: "runnel-analyzer".to_owned(),
            topics: Topics {
                aggregates: TopicSettings::new(topics::AGGREGATES),
                points: TopicSettings::new(topics::POINTS),
                alerts: TopicSettings::new(topics::ALERTS),
                changelog: TopicSettings::new("runnel.analyzer-changelog.v1"),
                points_changelog: TopicSettings::new("runnel.analyzer-points-changelog.v1"),
            },
            model: Model {
                windows: 30,
                holt: HoltSettings { alpha: 0.5, beta: 0.1 },
                detector: DetectorSpec::default(),
                detectors: BTreeMap::new(),
                scores: 60,
                points: BTreeMap::new(),
            },
            rules: Vec::new(),
            rules_file: None,
            reload_interval: Duration::from_secs(2),
            commit_interval: Duration::from_millis(250),
            transactional_id: format!("runnel-analyzer-{}", plumbing::config::hostname()),
            transaction_timeout: Duration::from_secs(10),
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(9467),
        }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        errors.extend(self.topics.aggregates.validate("topics.aggregates"));
        errors.extend(self.topics.alerts.validate("topics.alerts"));
        errors.extend(self.topics.changelog.validate("topics.changelog"));
        errors.extend(self.topics.points.validate("topics.points"));
        errors.extend(self.topics.points_changelog.validate("topics.points_changelog"));
        check(&mut errors, !self.transactional_id.trim().is_empty(), "transactional_id", "must not be empty");
        check(&mut errors, !self.transaction_timeout.is_zero(), "transaction_timeout", "must be positive");
        errors.extend(self.telemetry.validate("telemetry"));
        errors.extend(self.ops.validate("ops"));
        check(&mut errors, !self.group_id.is_empty(), "group_id", "must not be empty");
        let m = &self.model;
        check(&mut errors, m.windows >= 3, "model.windows", format!("{} must be at least 3: a line and its interval need three points", m.windows));
        check(&mut errors, m.holt.alpha > 0.0 && m.holt.alpha <= 1.0, "model.holt.alpha", format!("{} is not in (0, 1]", m.holt.alpha));
        check(&mut errors, (0.0..=1.0).contains(&m.holt.beta), "model.holt.beta", format!("{} is not in [0, 1]", m.holt.beta));
        let named = m.detectors.iter().map(|(metric, spec)| (format!("model.detectors.{metric}"), spec));
        for (path, spec) in std::iter::once(("model.detector".to_owned(), &m.detector)).chain(named) {
            for (field, problem) in spec.problems() {
                errors.push(FieldError::new(format!("{path}.{field}"), problem));
            }
        }
        for (metric, per_point) in &m.points {
            check(&mut errors, !per_point.interval.is_zero(), &format!("model.points.{metric}.interval"), "must be positive");
        }
        check(&mut errors, !self.commit_interval.is_zero(), "commit_interval", "must be positive");
        check(&mut errors, !self.reload_interval.is_zero(), "reload_interval", "must be positive");
        if let (Some(_), Err(problems)) = (&self.rules_file, self.running_rules()) {
            errors.push(FieldError::new("rules_file", problems));
        }
        let mut names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            check(&mut errors, names.insert(&rule.name), &format!("rules[{i}].name"), format!("{:?} is used by an earlier rule", rule.name));
            for (field, problem) in rule.problems() {
                errors.push(FieldError::new(format!("rules[{i}].{field}"), problem));
            }
        }
        errors
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }

    fn ops(&self) -> &OpsSettings {
        &self.ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Comparison, Kind};

    #[test]
    fn bad_rules_and_detectors_are_named_by_index_and_metric() {
        let hot = Rule::threshold("hot", "temp", Comparison::Above, 30.0);
        let mut s = Settings { rules: vec![hot.clone(), hot], ..Settings::default() };
        s.rules[0].kind = Kind::Anomaly;
        s.model.detectors.insert("cpu".to_owned(), DetectorSpec::Ewma { alpha: 2.0, warmup: 1 });
        s.model.holt.beta = -1.0;
        s.rules_file = Some(PathBuf::from("/nonexistent/rules.toml"));
        let keys: Vec<String> = s.validate().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, [
            "model.holt.beta",
            "model.detectors.cpu.alpha",
            "rules_file",
            "rules[0].op",
            "rules[0].score",
            "rules[1].name"
        ]);
    }
}
