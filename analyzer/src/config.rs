//! The analyzer's settings.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

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
    /// Threshold rules, evaluated on every window mean of their metric.
    // An empty list does not survive the defaults layer, hence the serde default.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// How often offsets are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    pub telemetry: TelemetrySettings,
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
    /// Output: one message per alert state change.
    pub alerts: TopicSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// How many of a series' latest windows the trend line is fitted to.
    pub windows: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings { listen: SocketAddr::from(([127, 0, 0, 1], 50053)) },
            kafka: KafkaSettings::default(),
            group_id: "runnel-analyzer".to_owned(),
            topics: Topics {
                aggregates: TopicSettings::new(topics::AGGREGATES),
                alerts: TopicSettings::new(topics::ALERTS),
            },
            model: Model { windows: 30 },
            rules: Vec::new(),
            commit_interval: Duration::from_secs(1),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        errors.extend(self.topics.aggregates.validate("topics.aggregates"));
        errors.extend(self.topics.alerts.validate("topics.alerts"));
        errors.extend(self.telemetry.validate("telemetry"));
        check(&mut errors, !self.group_id.is_empty(), "group_id", "must not be empty");
        check(&mut errors, self.model.windows >= 2, "model.windows", format!("{} must be at least 2: a line needs two points", self.model.windows));
        check(&mut errors, !self.commit_interval.is_zero(), "commit_interval", "must be positive");
        let mut names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            check(&mut errors, !rule.name.is_empty(), &format!("rules[{i}].name"), "must not be empty");
            check(&mut errors, names.insert(&rule.name), &format!("rules[{i}].name"), format!("{:?} is used by an earlier rule", rule.name));
            check(&mut errors, !rule.metric.is_empty(), &format!("rules[{i}].metric"), "must not be empty");
            check(&mut errors, rule.threshold.is_finite(), &format!("rules[{i}].threshold"), "must be a finite number");
        }
        errors
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}
