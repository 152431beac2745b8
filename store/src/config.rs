//! The store's settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr as _;
use std::path::PathBuf;
use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::ops::OpsSettings;
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

use crate::segment::Kind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the query gRPC service listens.
    pub grpc: GrpcSettings,
    pub kafka: KafkaSettings,
    /// Consumer group prefix; store instances of one pipeline share it. Each table reads its topic in
    /// a group of its own, `<group_id>.<table>` (`runnel-store.points`).
    pub group_id: String,
    pub topics: Topics,
    pub storage: Storage,
    pub query: QueryLimits,
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
    /// Input: the collector's raw points (table `points`).
    pub points: TopicSettings,
    /// Input: the processor's closed windows (table `aggregates` and its tiers).
    pub aggregates: TopicSettings,
    /// Input: the analyzer's alert state changes (table `alerts`).
    pub alerts: TopicSettings,
}

impl Topics {
    /// The topic of the table of `kind`.
    pub fn of(&self, kind: Kind) -> &TopicSettings {
        match kind {
            Kind::Points => &self.points,
            Kind::Aggregates => &self.aggregates,
            Kind::Alerts => &self.alerts,
        }
    }
}

/// How long each kind of record is kept, by event time: a segment goes once its newest record is
/// older. Unset keeps them for ever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(with = "humantime_serde", default)]
    pub points: Option<Duration>,
    /// The processor's windows; a segment also waits until every tier has rolled it up.
    #[serde(with = "humantime_serde", default)]
    pub aggregates: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    pub alerts: Option<Duration>,
}

impl Retention {
    /// The retention of the table of `kind`.
    pub fn of(&self, kind: Kind) -> Option<Duration> {
        match kind {
            Kind::Points => self.points,
            Kind::Aggregates => self.aggregates,
            Kind::Alerts => self.alerts,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The folder holding segments and manifests (the object store) when `url` is unset; created if
    /// missing. Every store instance of a pipeline points at the same one.
    pub path: PathBuf,
    /// An S3 bucket instead of the folder: `s3://<bucket>` or `s3://<bucket>/<prefix>`, on Amazon S3
    /// or any S3-compatible store (with `options.aws_endpoint`). The store needs conditional writes
    /// (`If-None-Match`), which fence a former owner of a partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Options of the store at `url`, by the names of the `object_store` crate: `aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`, ... They override
    /// the standard `AWS_*` environment variables.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// How often rows read from Kafka are written as segments: how stale another instance's answers
    /// can be, and how much a crash makes the store read again.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Most rows held in memory before reading from Kafka pauses for a flush to catch up.
    pub max_pending_rows: usize,
    /// Memory for decoded segments, in bytes.
    pub cache_bytes: usize,
    /// How long raw points, the processor's windows and alerts are kept.
    pub retention: Retention,
    /// Downsampled tiers, each rolled up from the windows by merging them (sketches included) into
    /// steps of its size, with a retention of its own. A `Range` whose step is a multiple of a tier's
    /// reads the coarsest such tier; SQL sees each as the table `aggregates_<step>` (`aggregates_1m`).
    pub tiers: Vec<TierSettings>,
    /// How often the owner of a partition rolls up, compacts and expires its segments.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// A run of at least this many consecutive segments, each with fewer than `compact_rows` rows, is
    /// merged into one.
    pub compact_segments: usize,
    pub compact_rows: u64,
    /// How long a segment that no manifest lists any more (compacted or expired) stays readable for the
    /// queries that listed it a moment before.
    #[serde(with = "humantime_serde")]
    pub delete_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {
    /// The tier's step: whole seconds, e.g. `1m`.
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// How long its rows are kept, by event time; unset keeps them for ever.
    #[serde(with = "humantime_serde", default)]
    pub retention: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLimits {
    /// Most series one `Range`, `Latest` or `ListSeries` page may return.
    pub max_series: u64,
    /// Most windows one `Range` may read (before merging them into steps).
    pub max_windows: u64,
    /// Most rows one `Sql` answer may hold.
    pub max_rows: u64,
    /// Threads that run `Sql` queries, apart from those that ingest and answer the other queries.
    pub sql_threads: usize,
    /// Working memory of one `Sql` query (sorts, aggregations, joins), in bytes.
    pub sql_memory_bytes: usize,
    /// Largest encoded answer of one query, in bytes (a client must accept that much: tonic's default
    /// is 4 MiB).
    pub max_response_bytes: usize,
    /// Longest time range of one `Range`.
    #[serde(with = "humantime_serde")]
    pub max_range: Duration,
    /// Longest a query may run.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings { listen: SocketAddr::from(([127, 0, 0, 1], 50052)) },
            kafka: KafkaSettings::default(),
            group_id: "runnel-store".to_owned(),
            topics: Topics {
                points: TopicSettings::new(topics::POINTS),
                aggregates: TopicSettings::new(topics::AGGREGATES),
                alerts: TopicSettings::new(topics::ALERTS),
            },
            storage: Storage {
                path: PathBuf::from("data/store"),
                url: None,
                options: BTreeMap::new(),
                flush_interval: Duration::from_secs(1),
                max_pending_rows: 2_000_000,
                cache_bytes: 1 << 30,
                retention: Retention {
                    points: Some(Duration::from_secs(7 * 86_400)),
                    aggregates: Some(Duration::from_secs(30 * 86_400)),
                    alerts: Some(Duration::from_secs(400 * 86_400)),
                },
                tiers: vec![
                    TierSettings { step: Duration::from_secs(60), retention: Some(Duration::from_secs(400 * 86_400)) },
                    TierSettings { step: Duration::from_secs(3_600), retention: None },
                ],
                maintenance_interval: Duration::from_secs(10),
                compact_segments: 10,
                compact_rows: 1_000_000,
                delete_grace: Duration::from_secs(60),
            },
            query: QueryLimits {
                max_series: 10_000,
                max_windows: 5_000_000,
                max_response_bytes: 64 << 20,
                max_rows: 1_000_000,
                sql_threads: 2,
                sql_memory_bytes: 2 << 30,
                max_range: Duration::from_secs(400 * 86_400),
                timeout: Duration::from_secs(30),
            },
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(9466),
        }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        for kind in Kind::ALL {
            errors.extend(self.topics.of(kind).validate(&format!("topics.{}", kind.name())));
        }
        errors.extend(self.telemetry.validate("telemetry"));
        errors.extend(self.ops.validate("ops"));
        check(&mut errors, !self.group_id.is_empty(), "group_id", "must not be empty");
        let names: std::collections::HashSet<&str> = Kind::ALL.iter().map(|k| self.topics.of(*k).name.as_str()).collect();
        check(&mut errors, names.len() == Kind::ALL.len(), "topics", "points, aggregates and alerts must each have a topic of their own");
        check(&mut errors, !self.storage.path.as_os_str().is_empty(), "storage.path", "must not be empty");
        if let Some(url) = &self.storage.url
            && let Err(reason) = crate::objects::s3_url(url)
        {
            check(&mut errors, false, "storage.url", reason);
        }
        for key in self.storage.options.keys() {
            let known = object_store::aws::AmazonS3ConfigKey::from_str(key).is_ok();
            check(&mut errors, known, &format!("storage.options.{key}"), "is not an option of an S3 store");
        }
        check(&mut errors, !self.storage.flush_interval.is_zero(), "storage.flush_interval", "must be positive");
        check(&mut errors, self.storage.max_pending_rows >= 1, "storage.max_pending_rows", "must be at least 1");
        let st = &self.storage;
        check(&mut errors, !st.maintenance_interval.is_zero(), "storage.maintenance_interval", "must be positive");
        check(&mut errors, st.compact_segments >= 2, "storage.compact_segments", "must be at least 2");
        check(&mut errors, st.compact_rows >= 1, "storage.compact_rows", "must be at least 1");
        for (i, tier) in st.tiers.iter().enumerate() {
            let whole = tier.step.subsec_nanos() == 0 && tier.step.as_secs() > 0;
            check(&mut errors, whole, &format!("storage.tiers[{i}].step"), format!("{:?} must be a whole number of seconds", tier.step));
            let rising = i == 0 || st.tiers.get(i - 1).is_some_and(|before| tier.step > before.step);
            check(&mut errors, rising, &format!("storage.tiers[{i}].step"), "steps must grow from one tier to the next");
        }
        let q = &self.query;
        check(&mut errors, q.max_series >= 1, "query.max_series", "must be at least 1");
        check(&mut errors, q.max_windows >= 1, "query.max_windows", "must be at least 1");
        check(&mut errors, q.max_rows >= 1, "query.max_rows", "must be at least 1");
        check(&mut errors, q.sql_threads >= 1, "query.sql_threads", "must be at least 1");
        check(&mut errors, q.sql_memory_bytes >= 1 << 20, "query.sql_memory_bytes", "must be at least 1 MiB");
        check(&mut errors, q.max_response_bytes >= 1, "query.max_response_bytes", "must be at least 1");
        check(&mut errors, !q.max_range.is_zero(), "query.max_range", "must be positive");
        check(&mut errors, !q.timeout.is_zero(), "query.timeout", "must be positive");
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

    #[test]
    fn a_bad_object_store_or_topic_layout_is_named() {
        let mut s = Settings::default();
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        s.storage.url = Some("http://bucket/prefix".into());
        s.storage.options.insert("aws_endpoint".into(), "http://127.0.0.1:9000".into());
        s.storage.options.insert("aws_endpont".into(), "typo".into());
        s.topics.alerts = s.topics.points.clone();
        let keys: Vec<String> = s.validate().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["topics", "storage.url", "storage.options.aws_endpont"]);
        s.storage.url = Some("s3://bucket/a/b".into());
        s.storage.options.remove("aws_endpont");
        s.topics.alerts = TopicSettings::new(topics::ALERTS);
        assert!(s.validate().is_empty(), "{:?}", s.validate());
    }
}
