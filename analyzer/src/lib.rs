//! The analyzer: per series, a least-squares trend over the latest window means, answering `Forecast`;
//! threshold rules on every window, publishing each alert state change to the alerts topic and to
//! `WatchAlerts` subscribers.

pub mod backtest;
pub mod config;
pub mod error;
mod grpc;
mod kafka;
pub mod model;
pub mod nab;
pub mod rules;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use proto::v1::analyzer_service_server::AnalyzerServiceServer;
use tokio::sync::broadcast;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
use crate::state::Analysis;

/// How many alert changes a slow `WatchAlerts` subscriber may fall behind before its stream ends.
const WATCH_BUFFER: usize = 4096;

/// An analyzer that is connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    consume: kafka::Consume,
}

impl App {
    /// Creates the topics if needed, connects the consumer and the producer, and binds.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings { grpc, kafka, group_id, topics, model, rules, commit_interval, .. } = settings;
        kafka.ensure_topics(&[&topics.aggregates, &topics.alerts]).await?;
        let consume = kafka::Consume {
            consumer: kafka.consumer("runnel-analyzer", &group_id).create()?,
            producer: kafka.producer("runnel-analyzer").create()?,
            aggregates_topic: topics.aggregates.name,
            alerts_topic: topics.alerts.name,
            analysis: Arc::new(Mutex::new(Analysis::new(model, rules))),
            alerts: broadcast::channel(WATCH_BUFFER).0,
            commit_interval,
        };
        let listener = Listener::bind(grpc.listen).await.map_err(Error::Bind)?;
        Ok(Self { listener, consume })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Consumes and serves until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let shutdown = shutdown.child_token();
        let service = grpc::Service { analysis: Arc::clone(&self.consume.analysis), alerts: self.consume.alerts.clone(), shutdown: shutdown.clone() };
        let router = proto::tonic::transport::Server::builder().add_service(AnalyzerServiceServer::new(service));
        let (served, consumed) = tokio::join!(
            async {
                let result = self.listener.serve(router, shutdown.clone()).await;
                shutdown.cancel();
                result
            },
            async {
                let result = self.consume.run(shutdown.clone()).await;
                shutdown.cancel();
                result
            }
        );
        served?;
        consumed
    }
}
