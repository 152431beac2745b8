//! The processor's settings.

use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

use crate::window::WindowSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    /// Consumer group; every processor instance of one pipeline shares it.
    pub group_id: String,
    pub topics: Topics,
    pub windows: Windows,
    /// How often offsets are committed; bounds the replay after a crash.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Input.
    pub points: TopicSettings,
    /// Output: one message per closed window and series.
    pub aggregates: TopicSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Windows {
    /// Tumbling window length.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// How far behind its partition's newest event time a point may arrive and still count.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            group_id: "runnel-processor".to_owned(),
            topics: Topics {
                points: TopicSettings::new(topics::POINTS),
                aggregates: TopicSettings::new(topics::AGGREGATES),
            },
            windows: Windows { size: Duration::from_secs(10), allowed_lateness: Duration::from_secs(5) },
            commit_interval: Duration::from_secs(1),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Windows {
    pub fn spec(&self) -> WindowSpec {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        WindowSpec { size_ns: nanos(self.size), allowed_lateness_ns: nanos(self.allowed_lateness) }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        errors.extend(self.topics.points.validate("topics.points"));
        errors.extend(self.topics.aggregates.validate("topics.aggregates"));
        errors.extend(self.telemetry.validate("telemetry"));
        check(&mut errors, !self.group_id.is_empty(), "group_id", "must not be empty");
        check(&mut errors, self.windows.size >= Duration::from_millis(1), "windows.size", format!("{} must be at least 1ms", humantime::format_duration(self.windows.size)));
        check(&mut errors, self.windows.size <= Duration::from_secs(366 * 24 * 3600), "windows.size", format!("{} must be at most a year", humantime::format_duration(self.windows.size)));
        check(&mut errors, self.windows.allowed_lateness <= Duration::from_secs(366 * 24 * 3600), "windows.allowed_lateness", format!("{} must be at most a year", humantime::format_duration(self.windows.allowed_lateness)));
        check(&mut errors, !self.commit_interval.is_zero(), "commit_interval", "must be positive");
        check(
            &mut errors,
            self.topics.points.name != self.topics.aggregates.name,
            "topics.aggregates.name",
            "must differ from topics.points.name",
        );
        errors
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}
