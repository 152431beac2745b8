//! The analyzer: per series, trend models and an anomaly detector updated once per window, answering
//! `Forecast` and `AnomalyScores`; alert rules on every window, publishing each alert state change to
//! the alerts topic, from which every instance answers `ListAlerts` and `WatchAlerts`.

pub mod alerts;
pub mod backtest;
pub mod config;
pub mod error;
mod grpc;
mod kafka;
pub mod model;
pub mod nab;
pub mod reload;
pub mod rules;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use proto::v1::analyzer_service_server::AnalyzerServiceServer;
use plumbing::kafka::KafkaSettings;
use plumbing::txn::Transactions;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
pub use crate::kafka::Stats;
use crate::alerts::AlertBook;
use crate::state::Analysis;

/// An analyzer that is connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    consume: kafka::Consume,
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

impl App {
    /// Creates the topics if needed, connects the consumer and the producer, and binds.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings {
            grpc, kafka, group_id, topics, model, rules, rules_file, reload_interval, commit_interval, transactional_id, transaction_timeout, ..
        } = settings;
        // The settings' check has read the rules file already; it may have changed since.
        let running = match &rules_file {
            Some(file) => reload::load(&rules, file).map_err(Error::Rules)?,
            None => rules.clone(),
        };
        kafka.ensure_topics(&[&topics.aggregates, &topics.alerts]).await?;
        // One changelog partition per aggregates partition, compacted: it holds the series, not history.
        let partitions = {
            let (kafka, topic) = (kafka.clone(), topics.aggregates.name.clone());
            tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await.map_err(|err| Error::Internal(err.to_string()))??
        };
        let changelog = plumbing::kafka::TopicSettings { partitions, ..topics.changelog };
        kafka.ensure_topics_with(&[(&changelog, &[("cleanup.policy", "compact")][..])]).await?;
        let changelog_partitions = {
            let (kafka, topic) = (kafka.clone(), changelog.name.clone());
            tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await.map_err(|err| Error::Internal(err.to_string()))??
        };
        if changelog_partitions < partitions {
            return Err(Error::Config(format!(
                "changelog topic {} has {changelog_partitions} partitions, fewer than the {partitions} of {}; add partitions to it",
                changelog.name, topics.aggregates.name
            )));
        }
        let config = kafka.transactional_producer("runnel-analyzer", &transactional_id, transaction_timeout);
        // Registering the id blocks until the broker fenced any former instance with it.
        let txns = tokio::task::spawn_blocking(move || Transactions::new(config, transaction_timeout))
            .await
            .map_err(|err| Error::Internal(err.to_string()))??;
        let mut changelog_reader = kafka.consumer("runnel-analyzer-restore", &format!("{group_id}-restore"));
        changelog_reader.set("enable.partition.eof", "true");
        let wiring = kafka::Wiring {
            aggregates_topic: topics.aggregates.name,
            alerts_topic: topics.alerts.name,
            changelog_topic: changelog.name,
            changelog_reader,
            timeout: transaction_timeout.max(kafka.request_timeout),
        };
        let shared = Arc::new(kafka::Shared::new(Analysis::new(model, running), txns, wiring));
        let consumer = kafka.consumer("runnel-analyzer", &group_id).create_with_context(kafka::RebalanceContext { shared: Arc::clone(&shared) })?;
        let consume = kafka::Consume { consumer, shared, commit_interval };
        let listener = Listener::bind(grpc.listen).await.map_err(Error::Bind)?;
        let reloading = Reloading { file: rules_file, settings_rules: rules, interval: reload_interval };
        Ok(Self { listener, consume, kafka, reloading, reloads: Arc::default() })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Counters a test, a benchmark or an operator can read while the analyzer runs.
    pub fn stats(&self) -> Arc<kafka::Stats> {
        Arc::clone(&self.consume.shared.stats)
    }

    /// How many reloads of the rules file were applied and refused.
    pub fn reloads(&self) -> Arc<reload::Reloads> {
        Arc::clone(&self.reloads)
    }

    /// Consumes and serves until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let shutdown = shutdown.child_token();
        let book = Arc::new(Mutex::new(AlertBook::default()));
        let service = grpc::Service {
            analysis: Arc::clone(&self.consume.shared.analysis),
            book: Arc::clone(&book),
            kafka: self.kafka.clone(),
            alerts_topic: self.consume.shared.alerts_topic.clone(),
            shutdown: shutdown.clone(),
        };
        let router = proto::tonic::transport::Server::builder().add_service(AnalyzerServiceServer::new(service));
        let follow = AlertBook::follow(book, self.kafka.clone(), self.consume.shared.alerts_topic.clone(), shutdown.clone());
        let reload = {
            let (analysis, reloads, shutdown) = (Arc::clone(&self.consume.shared.analysis), Arc::clone(&self.reloads), shutdown.clone());
            let Reloading { file, settings_rules, interval } = self.reloading;
            reload::watch(file, settings_rules, interval, analysis, reloads, shutdown)
        };
        let (served, consumed, followed, reloaded) = tokio::join!(
            async {
                let result = self.listener.serve(router, shutdown.clone()).await;
                shutdown.cancel();
                result
            },
            async {
                let result = self.consume.run(shutdown.clone()).await;
                shutdown.cancel();
                result
            },
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
        consumed?;
        followed?;
        reloaded
    }
}
