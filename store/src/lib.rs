//! The store: consumes raw points, aggregates and alerts from Kafka into Parquet segments on an object
//! store (a local folder by default), listed in one manifest per partition, and answers `QueryService`
//! from those segments plus what it holds in memory. Instances in one consumer group share the object store and split the
//! partitions; any of them answers any query.

pub mod client;
pub mod config;
pub mod error;
mod grpc;
mod kafka;
mod maintain;
mod metrics;
pub mod manifest;
pub mod objects;
pub mod range;
pub mod rollup;
pub mod segment;
pub mod select;
mod sql;
mod table;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use plumbing::ops::{KafkaStats, OpsListener, Readiness};
use proto::v1::query_service_server::QueryServiceServer;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
pub use crate::kafka::Stats;
pub use crate::maintain::Upkeep;
use crate::objects::Objects;
pub use crate::segment::Kind;
use crate::table::{Table, Tier};

/// The object name prefix and SQL table of the tier of `base` (e.g. `aggregates`) with `step`:
/// `aggregates_1m`, `aggregates_1h`.
pub fn tier_name(base: &str, step: std::time::Duration) -> String {
    Tier::new(base, step, None).kind
}

/// A store that is open, connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    ops: OpsListener,
    kafka_stats: KafkaStats,
    /// One per kind, in the order of `Kind::ALL`.
    ingests: Vec<kafka::Ingest>,
    query: config::QueryLimits,
}

impl App {
    /// Opens the object store, creates the topics if needed, connects a consumer per table and binds.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings { grpc, kafka, group_id, topics, storage, query, ops, telemetry, .. } = settings;
        let kafka_stats = KafkaStats::default();
        let objects = Objects::open(&storage)?;
        kafka.ensure_topics(&Kind::ALL.map(|kind| topics.of(kind))).await?;
        let mut ingests = Vec::with_capacity(Kind::ALL.len());
        for kind in Kind::ALL {
            let topic = topics.of(kind).name.clone();
            let partitions = {
                let (kafka, topic) = (kafka.clone(), topic.clone());
                tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await??
            };
            // Only the windows have downsampled tiers.
            let tiers = match kind {
                Kind::Aggregates => storage.tiers.iter().map(|t| Tier::new(kind.name(), t.step, t.retention)).collect(),
                Kind::Points | Kind::Alerts => Vec::new(),
            };
            let table = Arc::new(Table::new(kind, topic, partitions, objects.clone(), tiers, storage.cache_bytes));
            let (stats, maintenance) = (Arc::<kafka::Stats>::default(), maintain::Policy::of(kind, &storage));
            let context = kafka::IngestContext {
                table: Arc::clone(&table),
                stats: Arc::clone(&stats),
                delete_grace: maintenance.delete_grace,
                runtime: tokio::runtime::Handle::current(),
                kafka_stats: kafka_stats.clone(),
            };
            let group = format!("{group_id}.{}", kind.name());
            let consumer = plumbing::kafka::with_statistics(&mut kafka.consumer("runnel-store", &group)).create_with_context(context)?;
            ingests.push(kafka::Ingest {
                consumer: Arc::new(consumer),
                table,
                stats,
                flush_interval: storage.flush_interval,
                max_pending_rows: storage.max_pending_rows,
                maintenance,
                upkeep: Arc::default(),
            });
        }
        let listener = Listener::bind(grpc.listen).await.map_err(Error::Bind)?;
        let ops = OpsListener::bind(ops.listen).await.map_err(Error::Ops)?.with_otlp("store", &telemetry);
        Ok(Self { listener, ops, kafka_stats, ingests, query })
    }

    /// The address of `/livez`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    fn ingest(&self, kind: Kind) -> &kafka::Ingest {
        let index = Kind::ALL.iter().position(|k| *k == kind).unwrap_or_default();
        &self.ingests[index]
    }

    /// Counters of what the store has written of `kind`.
    pub fn stats(&self, kind: Kind) -> Arc<Stats> {
        Arc::clone(&self.ingest(kind).stats)
    }

    /// Counters of roll-ups, compactions and expiry of `kind`.
    pub fn upkeep(&self, kind: Kind) -> Arc<Upkeep> {
        Arc::clone(&self.ingest(kind).upkeep)
    }

    /// Ingests and serves until `shutdown`; then makes what memory holds durable, commits and stops.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        // A child token: a failure here stops this store's halves without cancelling the caller's token.
        let shutdown = shutdown.child_token();
        let executor = Arc::new(sql::Executor::new(self.query.sql_threads).map_err(Error::Executor)?);
        let table = |kind| Arc::clone(&self.ingest(kind).table);
        let tables = sql::Tables { points: table(Kind::Points), aggregates: table(Kind::Aggregates), alerts: table(Kind::Alerts) };
        let query_metrics = Arc::<grpc::QueryMetrics>::default();
        let query = grpc::Query::new(tables, self.query, executor, Arc::clone(&query_metrics));
        let router = proto::tonic::transport::Server::builder().add_service(QueryServiceServer::new(query));
        // Ready once every kind's consumer has taken its first assignment (an empty one counts) and
        // positioned each partition at its manifest's end.
        let readiness = Readiness::default();
        let stats: Vec<Arc<Stats>> = self.ingests.iter().map(|ingest| Arc::clone(&ingest.stats)).collect();
        let becoming_ready = {
            let (readiness, stats) = (readiness.clone(), stats.clone());
            async move {
                while stats.iter().any(|s| s.assignments.load(std::sync::atomic::Ordering::SeqCst) == 0) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                readiness.set(true);
            }
        };
        let mut registry = plumbing::ops::Registry::default();
        let upkeeps: Vec<Arc<Upkeep>> = self.ingests.iter().map(|ingest| Arc::clone(&ingest.upkeep)).collect();
        metrics::register(&mut registry, stats, upkeeps, query_metrics, self.kafka_stats);
        let ops = self.ops.serve(registry, readiness.clone(), shutdown.clone());
        let serving = self.listener.serve(router, &[<QueryServiceServer<grpc::Query> as proto::tonic::server::NamedService>::NAME], readiness, shutdown.clone());
        // Any part failing stops the others, so a store never serves stale data while ingest is dead.
        let ingests = self.ingests.into_iter().map(|ingest| {
            let shutdown = shutdown.clone();
            async move {
                let result = ingest.run(shutdown.clone()).await;
                shutdown.cancel();
                result
            }
        });
        let (served, ops_served, ingested, ()) = tokio::join!(
            async {
                let result = serving.await;
                shutdown.cancel();
                result
            },
            async {
                let result = ops.await;
                shutdown.cancel();
                result
            },
            futures::future::join_all(ingests),
            async {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = becoming_ready => {}
                }
            },
        );
        served?;
        ops_served.map_err(Error::Ops)?;
        ingested.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }
}
