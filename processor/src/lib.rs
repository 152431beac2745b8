//! The processor: per-series event-time windows (tumbling, hopping or session, per metric) over the points
//! topic, with count, sum, mean, min, max, first, last, standard deviation, gradient, rate and
//! quantiles from a mergeable sketch, produced to the aggregates topic when a partition's watermark
//! closes them, exactly once by default (Kafka transactions).

pub mod aggregate;
pub mod config;
pub mod error;
mod kafka;
mod metrics;
pub mod deadletter;
pub mod window;

use std::sync::Arc;

use plumbing::Shutdown;
use plumbing::ops::{OpsListener, Readiness, Registry};
use plumbing::reload::Reloads;

pub use crate::config::{Delivery, Settings, WindowDef, WindowRule};
pub use crate::error::{Error, Result};
pub use crate::kafka::{CLOSED_AT_HEADER, Stats};
use crate::kafka::{Output, Pipeline, RebalanceContext, Routing, Shared, Windowing};
use plumbing::txn::{ProducerHealth, Transactions};

/// A processor that is connected but not yet consuming.
#[derive(Debug)]
pub struct App {
    pipeline: Pipeline,
    ops: OpsListener,
    /// The windows file and how often it is checked, if the windows come from one.
    windows_file: Option<std::path::PathBuf>,
    reload_interval: std::time::Duration,
    reloads: Arc<Reloads>,
}

impl App {
    /// Creates the topics if needed and connects the consumer and the producer.
    pub async fn build(settings: Settings) -> Result<Self> {
        let changelog_topic = settings.changelog_topic();
        let Settings { kafka, group_id, topics, windows, commit_interval, delivery, transactional_id, transaction_timeout, changelog, ops, telemetry, .. } =
            settings;
        let ops = OpsListener::bind(ops.listen).await.map_err(Error::OpsBind)?.with_otlp("processor", &telemetry);
        kafka.ensure_topics(&[&topics.points, &topics.aggregates, &topics.deadletter]).await?;
        // One changelog partition per points partition, compacted: it holds the open windows, not history.
        let changelog_settings = plumbing::kafka::TopicSettings {
            name: changelog_topic.clone(),
            partitions: kafka.partition_count(&topics.points.name)?,
            replication_factor: changelog.replication_factor,
        };
        let segment_bytes = changelog.segment_bytes.to_string();
        let changelog_configs =
            [("cleanup.policy", "compact"), ("segment.bytes", segment_bytes.as_str()), ("min.cleanable.dirty.ratio", "0.1")];
        kafka.ensure_topics_with(&[(&changelog_settings, &changelog_configs[..])]).await?;
        let changelog_partitions = kafka.partition_count(&changelog_topic)?;
        if changelog_partitions < changelog_settings.partitions {
            return Err(Error::Config(format!(
                "changelog topic {changelog_topic} has {changelog_partitions} partitions, fewer than the {} of {}; add partitions to it",
                changelog_settings.partitions, topics.points.name
            )));
        }
        // librdkafka's statistics of the consumer and of the producers, for the metrics.
        let kafka_stats = plumbing::ops::KafkaStats::default();
        let output = match delivery {
            Delivery::ExactlyOnce => {
                let config = kafka.transactional_producer("runnel-processor", &transactional_id, transaction_timeout);
                // Registering the id blocks until the broker fenced any former instance with it.
                let stats = kafka_stats.clone();
                Output::ExactlyOnce(tokio::task::spawn_blocking(move || Transactions::new(config, transaction_timeout, stats)).await??)
            }
            Delivery::AtLeastOnce => {
                let health = ProducerHealth::reporting(kafka_stats.clone());
                let producer = plumbing::kafka::with_statistics(&mut kafka.producer("runnel-processor")).create_with_context(health.clone())?;
                Output::AtLeastOnce { producer, health }
            }
        };
        let routing = Routing {
            points_topic: topics.points.name,
            aggregates_topic: topics.aggregates.name,
            deadletter_topic: topics.deadletter.name,
            changelog_topic,
            max_future_ns: config::nanos(windows.max_future),
            idle_timeout: windows.idle_timeout,
        };
        let windowing = Windowing {
            // Validated at load (the windows file may have changed since: read again).
            rules: std::sync::RwLock::new(windows.running_rules().map_err(Error::Config)?),
            allowed_lateness_ns: config::nanos(windows.allowed_lateness),
            sketch: windows.sketch(),
        };
        let mut changelog_reader = kafka.consumer("runnel-processor-restore", &format!("{group_id}-restore"));
        changelog_reader.set("enable.partition.eof", "true");
        let timeout = transaction_timeout.max(kafka.request_timeout);
        let shared = Arc::new(Shared::new(windowing, routing, output, changelog_reader, timeout, changelog.restore_timeout, kafka_stats));
        let consumer = plumbing::kafka::with_statistics(&mut kafka.consumer("runnel-processor", &group_id))
            .create_with_context(RebalanceContext { shared: Arc::clone(&shared) })?;
        let (windows_file, reload_interval) = (windows.file, windows.reload_interval);
        Ok(Self { pipeline: Pipeline::new(consumer, shared, commit_interval), ops, windows_file, reload_interval, reloads: Arc::default() })
    }

    /// The address of `/livez`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> std::net::SocketAddr {
        self.ops.local_addr()
    }

    /// How many reloads of the windows file were applied and refused.
    pub fn reloads(&self) -> Arc<Reloads> {
        Arc::clone(&self.reloads)
    }

    /// Counters of what the processor has done.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.pipeline.shared.stats)
    }

    /// Consumes until `shutdown`, then commits what is durable and leaves the group. Ready once its
    /// first assignment (an empty one counts) is restored.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let readiness = Readiness::default();
        let mut registry = Registry::default();
        metrics::register(&mut registry, &self.pipeline.shared, Arc::clone(&self.reloads));
        let stats = self.stats();
        let becoming_ready = {
            let readiness = readiness.clone();
            async move {
                while stats.assignments.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                readiness.set(true);
            }
        };
        // The ops server and the reloading stop with the pipeline, whatever stopped that.
        let stop = shutdown.child_token();
        let shared = Arc::clone(&self.pipeline.shared);
        let apply = move |file: &std::path::Path| {
            let rules = config::load_windows_file(file)?;
            let described = rules.describe();
            *shared.windowing.rules.write().unwrap_or_else(std::sync::PoisonError::into_inner) = rules;
            Ok(described)
        };
        let reload = plumbing::reload::watch("windows", self.windows_file, self.reload_interval, self.reloads, stop.clone(), apply);
        let (processed, served, (), reloaded) = tokio::join!(
            async {
                let processed = self.pipeline.run(shutdown.clone()).await;
                stop.cancel();
                processed
            },
            self.ops.serve(registry, readiness, stop.clone()),
            async {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = becoming_ready => {}
                }
            },
            reload,
        );
        processed?;
        reloaded.map_err(Error::Signal)?;
        served.map_err(Error::OpsServe)
    }
}
