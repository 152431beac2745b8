//! The store: consumes aggregates from Kafka into Parquet segments on an object store (a local folder
//! by default), listed in one manifest per partition, and answers `QueryService` from those segments
//! plus what it holds in memory. Instances in one consumer group share the object store and split the
//! partitions; any of them answers any query.

pub mod config;
pub mod error;
mod grpc;
mod kafka;
mod maintain;
pub mod manifest;
pub mod objects;
pub mod range;
pub mod rollup;
pub mod segment;
pub mod select;
mod sql;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use proto::v1::query_service_server::QueryServiceServer;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
pub use crate::kafka::Stats;
pub use crate::maintain::Upkeep;
use crate::objects::Objects;
use crate::table::{AGGREGATES, Table, Tier};

/// The object name prefix and SQL table of the tier of `base` (e.g. `aggregates`) with `step`:
/// `aggregates_1m`, `aggregates_1h`.
pub fn tier_name(base: &str, step: std::time::Duration) -> String {
    Tier::new(base, step, None).kind
}

/// A store that is open, connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    ingest: kafka::Ingest,
    query: config::QueryLimits,
}

impl App {
    /// Opens the object store, creates the aggregates topic if needed, connects the consumer and binds.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings { grpc, kafka, group_id, topics, storage, query, .. } = settings;
        let objects = Objects::local(&storage.path)?;
        kafka.ensure_topics(&[&topics.aggregates]).await?;
        let partitions = {
            let kafka = kafka.clone();
            let topic = topics.aggregates.name.clone();
            tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await??
        };
        let tiers = storage.tiers.iter().map(|t| Tier::new(AGGREGATES, t.step, t.retention)).collect();
        let table = Arc::new(Table::new(AGGREGATES, topics.aggregates.name, partitions, objects, tiers, storage.cache_bytes));
        let context = kafka::IngestContext { table: Arc::clone(&table) };
        let consumer = kafka.consumer("runnel-store", &group_id).create_with_context(context)?;
        let listener = Listener::bind(grpc.listen).await.map_err(Error::Bind)?;
        let ingest = kafka::Ingest {
            consumer: Arc::new(consumer),
            table,
            stats: Arc::default(),
            flush_interval: storage.flush_interval,
            max_pending_rows: storage.max_pending_rows,
            maintenance: maintain::Policy::from(&storage),
            upkeep: Arc::default(),
        };
        Ok(Self { listener, ingest, query })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Counters of what the store has written.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.ingest.stats)
    }

    /// Counters of roll-ups, compactions and expiry.
    pub fn upkeep(&self) -> Arc<Upkeep> {
        Arc::clone(&self.ingest.upkeep)
    }

    /// Ingests and serves until `shutdown`; then makes what memory holds durable, commits and stops.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        // A child token: a failure here stops this store's halves without cancelling the caller's token.
        let shutdown = shutdown.child_token();
        let executor = Arc::new(sql::Executor::new(self.query.sql_threads).map_err(Error::Executor)?);
        let query = grpc::Query::new(Arc::clone(&self.ingest.table), self.query, executor);
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
