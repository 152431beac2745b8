//! The store: consumes aggregates into an embedded durable database, one row per series and window,
//! and answers `QueryService` from it.

pub mod config;
pub mod error;
mod grpc;
mod kafka;
pub mod manifest;
pub mod objects;
pub mod range;
pub mod segment;
pub mod select;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use proto::v1::query_service_server::QueryServiceServer;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
pub use crate::kafka::Stats;
use crate::storage::Storage;

/// A store that is open, connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    ingest: kafka::Ingest,
}

impl App {
    /// Opens the database, creates the aggregates topic if needed, connects the consumer and binds.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings { grpc, kafka, group_id, topics, storage, .. } = settings;
        let path = storage.path.clone();
        let db = Arc::new(tokio::task::spawn_blocking(move || Storage::open(&path)).await??);
        kafka.ensure_topics(&[&topics.aggregates]).await?;
        let consumer = kafka.consumer("runnel-store", &group_id).create()?;
        let listener = Listener::bind(grpc.listen).await.map_err(Error::Bind)?;
        let ingest = kafka::Ingest {
            consumer,
            topic: topics.aggregates.name,
            storage: db,
            stats: Arc::default(),
            max_batch: storage.max_batch,
            max_batch_delay: storage.max_batch_delay,
        };
        Ok(Self { listener, ingest })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Counters of what the store has written.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.ingest.stats)
    }

    /// Ingests and serves until `shutdown`; then makes the last batch durable, commits and stops.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        // A child token: a failure here stops this store's halves without cancelling the caller's token.
        let shutdown = shutdown.child_token();
        let query = grpc::Query::new(Arc::clone(&self.ingest.storage));
        let router = proto::tonic::transport::Server::builder().add_service(QueryServiceServer::new(query));
        let serving = self.listener.serve(router, shutdown.clone());
        // Either half failing stops the other, so a store never serves stale data while ingest is dead.
        let ingest = self.ingest.run(shutdown.clone());
        let (served, ingested) = tokio::join!(
            async {
                let result = serving.await;
                shutdown.cancel();
                result
            },
            async {
                let result = ingest.await;
                shutdown.cancel();
                result
            }
        );
        served?;
        ingested
    }
}
