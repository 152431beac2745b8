//! The collector: Runnel's ingest edge. It validates every point of a batch, refuses an invalid batch
//! whole, and writes accepted points to the points topic, answering only after Kafka acknowledged them.

pub mod config;
pub mod error;
mod grpc;
mod kafka;
pub mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use proto::v1::ingest_service_server::IngestServiceServer;

pub use crate::config::Settings;
pub use crate::error::{Error, Result};
use crate::kafka::PointSink;

/// How long shutdown waits for queued points to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A collector that is connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    ingest: grpc::Ingest,
    sink: PointSink,
}

impl App {
    /// Creates the points topic if needed, connects the producer and binds the gRPC listener.
    pub async fn build(settings: Settings) -> Result<Self> {
        settings.kafka.ensure_topics(&[&settings.topics.points]).await?;
        let producer = settings.kafka.producer("runnel-collector").create()?;
        let sink = PointSink::new(producer, settings.topics.points.name.clone(), settings.limits.max_in_flight_points);
        let listener = Listener::bind(settings.grpc.listen).await.map_err(Error::Bind)?;
        Ok(Self { listener, ingest: grpc::Ingest::new(settings.limits, sink.clone()), sink })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; then finishes in-flight calls and flushes the producer.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let router = proto::tonic::transport::Server::builder()
            .add_service(IngestServiceServer::new(self.ingest));
        self.listener.serve(router, shutdown).await?;
        self.sink.flush(FLUSH_TIMEOUT)?;
        tracing::info!("collector stopped");
        Ok(())
    }
}
