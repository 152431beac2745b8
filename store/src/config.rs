//! The store's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the query gRPC service listens.
    pub grpc: GrpcSettings,
    pub kafka: KafkaSettings,
    /// Consumer group; store instances of one pipeline share it.
    pub group_id: String,
    pub topics: Topics,
    pub storage: Storage,
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
    /// Input: the processor's closed windows.
    pub aggregates: TopicSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The folder holding the database; created if missing.
    pub path: PathBuf,
    /// Most aggregates written in one transaction.
    pub max_batch: usize,
    /// Longest an aggregate waits in memory before its batch is written.
    #[serde(with = "humantime_serde")]
    pub max_batch_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings { listen: SocketAddr::from(([127, 0, 0, 1], 50052)) },
            kafka: KafkaSettings::default(),
            group_id: "runnel-store".to_owned(),
            topics: Topics { aggregates: TopicSettings::new(topics::AGGREGATES) },
            storage: Storage {
                path: PathBuf::from("data/store"),
                max_batch: 5_000,
                max_batch_delay: Duration::from_millis(50),
            },
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        errors.extend(self.topics.aggregates.validate("topics.aggregates"));
        errors.extend(self.telemetry.validate("telemetry"));
        check(&mut errors, !self.group_id.is_empty(), "group_id", "must not be empty");
        check(&mut errors, !self.storage.path.as_os_str().is_empty(), "storage.path", "must not be empty");
        check(&mut errors, self.storage.max_batch >= 1, "storage.max_batch", format!("{} must be at least 1", self.storage.max_batch));
        errors
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}
