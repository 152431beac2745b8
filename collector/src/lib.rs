//! The collector: Runnel's ingest edge. It takes points over gRPC and HTTP (InfluxDB line protocol,
//! Prometheus remote write, JSON) and OTLP (gRPC and HTTP), validates every point of a batch, refuses an invalid batch whole, and writes accepted points
//! to the points topic, answering only after Kafka acknowledged them.

mod auth;
pub mod config;
pub mod error;
mod grpc;
mod http;
mod ingest;
mod kafka;
pub mod lineproto;
mod metrics;
pub mod otlp;
pub mod promwrite;
mod tls;
pub mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use plumbing::Shutdown;
use plumbing::grpc::Listener;
use plumbing::ops::{OpsListener, Readiness, Registry};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use proto::tonic::server::NamedService;
use proto::v1::ingest_service_server::IngestServiceServer;

pub use crate::config::Settings;
pub use crate::auth::TENANT_TAG;
pub use crate::grpc::ACKED_IN_FLIGHT;
pub use crate::error::{Error, Result};
use crate::ingest::Ingest;
use crate::kafka::PointSink;

/// The gRPC name of the ingest service, as the health service knows it.
const INGEST_SERVICE: &str = <IngestServiceServer<grpc::IngestGrpc> as NamedService>::NAME;

/// How long shutdown waits for queued points to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A collector that is connected and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    http: http::HttpListener,
    ops: OpsListener,
    tls: Option<tls::Tls>,
    ingest: Ingest,
    sink: PointSink,
}

impl App {
    /// Reads the TLS files, creates the points topic if needed, connects the producer and binds the
    /// gRPC and HTTP listeners.
    pub async fn build(settings: Settings) -> Result<Self> {
        let tls = settings.tls.as_ref().map(tls::Tls::load).transpose()?;
        settings.kafka.ensure_topics(&[&settings.topics.points, &settings.topics.deadletter]).await?;
        let max_in_flight = settings.limits.max_in_flight_points;
        // The in-flight bound is what refuses a write, never librdkafka's queue.
        let reach = kafka::Reachability::default();
        let producer = plumbing::kafka::with_statistics(&mut settings.kafka.producer_holding("runnel-collector", max_in_flight))
            .create_with_context(reach.clone())?;
        let sink = PointSink::new(producer, reach, settings.topics.points.name.clone(), settings.topics.deadletter.name.clone(), max_in_flight);
        let listener = Listener::bind(settings.grpc.listen).await.map_err(Error::Bind)?;
        let http = http::HttpListener::bind(settings.http.listen).await.map_err(Error::HttpBind)?;
        let ops = OpsListener::bind(settings.ops.listen).await.map_err(Error::OpsBind)?.with_otlp("collector", &settings.telemetry);
        let auth = auth::Auth::new(&settings.auth.tokens);
        warn_if_exposed(&settings, tls.as_ref());
        Ok(Self { listener, http, ops, tls, ingest: Ingest::new(settings.limits, settings.accept_partial, auth, sink.clone(), !settings.telemetry.otlp_endpoint.is_empty()), sink })
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The address of `/livez`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// Serves until `shutdown`; then finishes in-flight calls and flushes the producer.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let mut server = proto::tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            server = server.tls_config(tls.grpc())?;
        }
        let router = server
            .add_service(IngestServiceServer::new(grpc::IngestGrpc(self.ingest.clone())))
            .add_service(MetricsServiceServer::new(grpc::OtlpGrpc(self.ingest.clone())));
        // Ready once built (the topics exist and the producer is connected); the sink's probe makes it
        // not ready while every broker is down, when every write would be refused.
        let readiness = Readiness::ready();
        let services = [INGEST_SERVICE, <MetricsServiceServer<grpc::OtlpGrpc> as NamedService>::NAME];
        let mut registry = Registry::default();
        let sink = self.sink.clone();
        self.ingest.metrics().register(&mut registry, move || sink.in_flight());
        registry.register_collector(Box::new(self.sink.kafka_stats()));
        // Any server failing stops the others, then the collector.
        let stop = shutdown.child_token();
        let (grpc, http, ops, ()) = tokio::join!(
            async {
                let served = self.listener.serve(router, &services, readiness.clone(), stop.clone()).await;
                stop.cancel();
                served
            },
            async {
                let served = self.http.serve(self.ingest, self.tls.as_ref().map(tls::Tls::http), stop.clone()).await;
                stop.cancel();
                served
            },
            async {
                let served = self.ops.serve(registry, readiness.clone(), stop.clone()).await;
                stop.cancel();
                served
            },
            self.sink.probe(stop.clone(), readiness.clone()),
        );
        grpc?;
        http.map_err(Error::HttpServe)?;
        ops.map_err(Error::OpsServe)?;
        self.sink.flush(FLUSH_TIMEOUT)?;
        tracing::info!("collector stopped");
        Ok(())
    }
}

/// A listener off loopback without TLS or tokens is how data leaks or gets forged: say so at startup.
fn warn_if_exposed(settings: &Settings, tls: Option<&tls::Tls>) {
    for (name, addr) in [("grpc", settings.grpc.listen), ("http", settings.http.listen)] {
        if addr.ip().is_loopback() {
            continue;
        }
        if tls.is_none() {
            tracing::warn!(listener = name, %addr, "listening off loopback without tls: points and tokens travel in plaintext");
        }
        if settings.auth.tokens.is_empty() && !tls.is_some_and(tls::Tls::is_mutual) {
            tracing::warn!(listener = name, %addr, "listening off loopback with no api tokens and no client certificates: anyone can write");
        }
    }
}
