//! The analyzer: per series, trend models and an anomaly detector updated once per window (or per raw
//! point, for the metrics configured so), answering
//! `Forecast` and `AnomalyScores`; alert rules on every window, publishing each alert state change to
//! the alerts topic, from which every instance answers `ListAlerts` and `WatchAlerts`.

pub mod alerts;
pub mod backtest;
pub mod config;
pub mod error;
mod grpc;
mod kafka;
mod metrics;
pub mod model;
pub mod nab;
pub mod reload;
pub mod rules;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use plumbing::ops::{KafkaStats, OpsListener, Readiness};
use proto::v1::analyzer_service_server::AnalyzerServiceServer;
use plumbing::kafka::{KafkaSettings, TopicSettings};
use plumbing::txn::Transactions;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
pub use crate::kafka::Stats;
use crate::alerts::AlertBook;
use crate::state::{Analysis, Input};

/// How often readiness looks at whether every loop has restored its first assignment.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// An analyzer that is connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    ops: OpsListener,
    kafka_stats: KafkaStats,
    /// The loop over the aggregates.
    consume: kafka::Consume,
    /// The loop over the raw points of the metrics modelled per point, when there are some.
    points: Option<kafka::Consume>,
    alerts_topic: String,
    kafka: KafkaSettings,
    reloading: Reloading,
    reloads: Arc<reload::Reloads>,
}

/// What reloading the rules file needs.
#[derive(Debug)]
struct Reloading {
    file: Option<std::path::PathBuf>,
    settings_rules: Vec<rules::Rule>,
    interval: std::time::Duration,
}

/// One exactly-once input loop: its topic, its changelog and its identity in Kafka.
struct InputWiring<'a> {
    input: TopicSettings,
    changelog: TopicSettings,
    alerts_topic: String,
    group_id: String,
    transactional_id: String,
    kafka: &'a KafkaSettings,
    transaction_timeout: std::time::Duration,
    commit_interval: std::time::Duration,
    kafka_stats: &'a KafkaStats,
}

impl InputWiring<'_> {
    /// Creates the input and changelog topics if needed (the changelog compacted, with a partition per
    /// input partition), registers the transactional id and connects the consumer.
    async fn connect(self, analysis: Analysis) -> Result<kafka::Consume> {
        let kafka = self.kafka;
        kafka.ensure_topics(&[&self.input]).await?;
        let partition_count = |topic: &str| {
            let (kafka, topic) = (kafka.clone(), topic.to_owned());
            async move {
                let count = tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await.map_err(|err| Error::Internal(err.to_string()))?;
                Ok::<_, Error>(count?)
            }
        };
        let partitions = partition_count(&self.input.name).await?;
        let changelog = TopicSettings { partitions, ..self.changelog };
        kafka.ensure_topics_with(&[(&changelog, &[("cleanup.policy", "compact")][..])]).await?;
        let changelog_partitions = partition_count(&changelog.name).await?;
        if changelog_partitions < partitions {
            return Err(Error::Config(format!(
                "changelog topic {} has {changelog_partitions} partitions, fewer than the {partitions} of {}; add partitions to it",
                changelog.name, self.input.name
            )));
        }
        let config = kafka.transactional_producer("runnel-analyzer", &self.transactional_id, self.transaction_timeout);
        // Registering the id blocks until the broker fenced any former instance with it.
        let (timeout, stats) = (self.transaction_timeout, self.kafka_stats.clone());
        let txns = tokio::task::spawn_blocking(move || Transactions::new(config, timeout, stats)).await.map_err(|err| Error::Internal(err.to_string()))??;
        let mut changelog_reader = kafka.consumer("runnel-analyzer-restore", &format!("{}-restore", self.group_id));
        changelog_reader.set("enable.partition.eof", "true");
        let wiring = kafka::Wiring {
            input_topic: self.input.name,
            alerts_topic: self.alerts_topic,
            changelog_topic: changelog.name,
            changelog_reader,
            timeout: timeout.max(kafka.request_timeout),
            kafka_stats: self.kafka_stats.clone(),
        };
        let shared = Arc::new(kafka::Shared::new(analysis, txns, wiring));
        let consumer = plumbing::kafka::with_statistics(&mut kafka.consumer("runnel-analyzer", &self.group_id)).create_with_context(kafka::RebalanceContext { shared: Arc::clone(&shared) })?;
        Ok(kafka::Consume { consumer, shared, commit_interval: self.commit_interval })
    }
}

impl App {
    /// Creates the topics if needed, connects the consumers and the producers, and binds.
    pub async fn build(settings: Settings) -> Result<Self> {
        // The settings' check has read the rules file already; it may have changed since.
        let running = settings.running_rules().map_err(Error::Rules)?;
        let Settings {
            grpc, kafka, group_id, topics, model, rules, rules_file, reload_interval, commit_interval, transactional_id, transaction_timeout, ops, telemetry, ..
        } = settings;
        let kafka_stats = KafkaStats::default();
        kafka.ensure_topics(&[&topics.alerts]).await?;
        let wiring = |input: &TopicSettings, changelog: &TopicSettings, suffix: &str| InputWiring {
            input: input.clone(),
            changelog: changelog.clone(),
            alerts_topic: topics.alerts.name.clone(),
            group_id: format!("{group_id}{suffix}"),
            transactional_id: format!("{transactional_id}{suffix}"),
            kafka: &kafka,
            transaction_timeout,
            commit_interval,
            kafka_stats: &kafka_stats,
        };
        let points = if model.points.is_empty() {
            None
        } else {
            let analysis = Analysis::of(Input::Points, model.clone(), running.clone());
            Some(wiring(&topics.points, &topics.points_changelog, "-points").connect(analysis).await?)
        };
        let consume = wiring(&topics.aggregates, &topics.changelog, "").connect(Analysis::new(model, running)).await?;
        let listener = Listener::bind(grpc.listen).await.map_err(Error::Bind)?;
        let ops = OpsListener::bind(ops.listen).await.map_err(Error::Ops)?.with_otlp("analyzer", &telemetry);
        let reloading = Reloading { file: rules_file, settings_rules: rules, interval: reload_interval };
        Ok(Self { listener, ops, kafka_stats, consume, points, alerts_topic: topics.alerts.name, kafka, reloading, reloads: Arc::default() })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The address of `/livez`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// Counters a test, a benchmark or an operator can read while the analyzer runs: those of the
    /// loop over the aggregates.
    pub fn stats(&self) -> Arc<kafka::Stats> {
        Arc::clone(&self.consume.shared.stats)
    }

    /// The counters of the loop over the points of the metrics modelled per point, if there are some.
    pub fn points_stats(&self) -> Option<Arc<kafka::Stats>> {
        self.points.as_ref().map(|points| Arc::clone(&points.shared.stats))
    }

    /// How many reloads of the rules file were applied and refused.
    pub fn reloads(&self) -> Arc<reload::Reloads> {
        Arc::clone(&self.reloads)
    }

    /// Consumes and serves until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let shutdown = shutdown.child_token();
        let book = Arc::new(Mutex::new(AlertBook::default()));
        let analyses: Vec<_> = std::iter::once(&self.consume).chain(&self.points).map(|c| Arc::clone(&c.shared.analysis)).collect();
        // Ready (health SERVING) once every loop has taken over its first assignment and restored it:
        // before that, its answers would miss the state a restore brings back.
        let stats: Vec<_> = std::iter::once(&self.consume).chain(&self.points).map(|c| Arc::clone(&c.shared.stats)).collect();
        let readiness = Readiness::default();
        let mut registry = plumbing::ops::Registry::default();
        metrics::register(&mut registry, stats.clone(), Arc::clone(&book), Arc::clone(&self.reloads), self.kafka_stats);
        let becoming_ready = {
            let readiness = readiness.clone();
            async move {
                while stats.iter().any(|s| s.assignments.load(std::sync::atomic::Ordering::SeqCst) == 0) {
                    tokio::time::sleep(READY_POLL).await;
                }
                readiness.set(true);
            }
        };
        let service = grpc::Service {
            analyses: analyses.clone(),
            book: Arc::clone(&book),
            kafka: self.kafka.clone(),
            alerts_topic: self.alerts_topic.clone(),
            shutdown: shutdown.clone(),
        };
        let router = proto::tonic::transport::Server::builder().add_service(AnalyzerServiceServer::new(service));
        let follow = AlertBook::follow(book, self.kafka.clone(), self.alerts_topic.clone(), shutdown.clone());
        let reload = {
            let (reloads, shutdown) = (Arc::clone(&self.reloads), shutdown.clone());
            let Reloading { file, settings_rules, interval } = self.reloading;
            reload::watch(file, settings_rules, interval, analyses, reloads, shutdown)
        };
        let points = async {
            let Some(points) = self.points else { return Ok(()) };
            let result = points.run(shutdown.clone()).await;
            shutdown.cancel();
            result
        };
        let (served, ops_served, (), consumed, points, followed, reloaded) = tokio::join!(
            async {
                let result = self.listener.serve(router, &[<AnalyzerServiceServer<grpc::Service> as proto::tonic::server::NamedService>::NAME], readiness.clone(), shutdown.clone()).await;
                shutdown.cancel();
                result
            },
            async {
                let result = self.ops.serve(registry, readiness.clone(), shutdown.clone()).await;
                shutdown.cancel();
                result
            },
            async {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = becoming_ready => {}
                }
            },
            async {
                let result = self.consume.run(shutdown.clone()).await;
                shutdown.cancel();
                result
            },
            points,
            async {
                let result = follow.await;
                shutdown.cancel();
                result
            },
            async {
                let result = reload.await;
                if result.is_err() {
                    shutdown.cancel();
                }
                result
            }
        );
        served?;
        ops_served.map_err(Error::Ops)?;
        consumed?;
        points?;
        followed?;
        reloaded
    }
}
