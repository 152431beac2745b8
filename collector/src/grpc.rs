//! The gRPC services: Runnel's `IngestService` and OTLP's `MetricsService`, both over the one
//! validated path to Kafka.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use proto::tonic::{Request, Response, Status, Streaming};
use proto::v1::ingest_service_server::IngestService;
use proto::v1::{FieldViolation, WriteAck, WriteRequest, WriteResponse};

use crate::error::{Error, MAX_REPORTED_VIOLATIONS};
use crate::ingest::{Batch, Ingest, Source};

/// The `authorization` metadata of a call, if any.
fn authorization<T>(request: &Request<T>) -> Option<&str> {
    request.metadata().get("authorization").and_then(|v| v.to_str().ok())
}

/// The ingest gRPC service.
#[derive(Debug, Clone)]
pub(crate) struct IngestGrpc(pub(crate) Ingest);

/// OTLP's metrics service, on the same port: an OpenTelemetry SDK or Collector exports here.
#[derive(Debug, Clone)]
pub(crate) struct OtlpGrpc(pub(crate) Ingest);

#[proto::tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let caller = self.0.authorize(Source::Otlp, authorization(&request))?;
        self.0.write_otlp(&caller, request.into_inner()).await?;
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[proto::tonic::async_trait]
impl IngestService for IngestGrpc {
    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let caller = self.0.authorize(Source::Grpc, authorization(&request))?;
        let parent = plumbing::trace::from_grpc(request.metadata());
        let points = request.into_inner().points;
        let written = self.0.write(&caller, Batch::of(Source::Grpc, points).traced(parent), String::new, |_| {}).await?;
        Ok(Response::new(WriteResponse { accepted: written.accepted as u64, dead_lettered: written.dead_lettered as u64 }))
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = self.0.authorize(Source::Grpc, authorization(&request))?;
        let parent = plumbing::trace::from_grpc(request.metadata());
        let mut stream = request.into_inner();
        let (mut accepted, mut dead_lettered) = (0u64, 0u64);
        let mut index = 0usize;
        while let Some(message) = stream.next().await {
            let points = message?.points;
            let prior = accepted;
            let written = self
                .0
                .write(&caller, Batch::of(Source::Grpc, points).traced(parent.clone()), || format!("stream message {index} refused, {prior} points of earlier messages accepted: "), |_| {})
            .await
            .map_err(|err| match err {
                Error::Invalid { .. } => Status::from(err),
                // The same code as for `Write` (RESOURCE_EXHAUSTED, UNAVAILABLE), telling what was accepted.
                other => {
                    let status = Status::from(other);
                    let message = format!("stream message {index}: {}; {prior} points of earlier messages accepted", status.message());
                    Status::new(status.code(), message)
                }
            })?;
            accepted += written.accepted as u64;
            dead_lettered += written.dead_lettered as u64;
            index += 1;
        }
        Ok(Response::new(WriteResponse { accepted, dead_lettered }))
    }

    type WriteAckedStream = Pin<Box<dyn Stream<Item = Result<WriteAck, Status>> + Send>>;

    async fn write_acked(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<Self::WriteAckedStream>, Status> {
        let caller = self.0.authorize(Source::Grpc, authorization(&request))?;
        let parent = plumbing::trace::from_grpc(request.metadata());
        let ingest = self.0.clone();
        // Up to ACKED_IN_FLIGHT messages of one stream are written at once; `buffered` answers them in
        // order, and stops reading the stream (backpressure) while that many are pending.
        let acks = request
            .into_inner()
            .enumerate()
            .map(move |(sequence, message)| {
                let (ingest, caller, parent) = (ingest.clone(), caller.clone(), parent.clone());
                async move {
                    // A broken stream ends the answers too; every message before it was answered.
                    let points = message?.points;
                    let sequence = sequence as u64;
                    Ok(match ingest.write(&caller, Batch::of(Source::Grpc, points).traced(parent), String::new, |_| {}).await {
                        Ok(w) => WriteAck { sequence, accepted: w.accepted as u64, dead_lettered: w.dead_lettered as u64, ..WriteAck::default() },
                        Err(err) => refused(sequence, err),
                    })
                }
            })
            .buffered(ACKED_IN_FLIGHT);
        Ok(Response::new(Box::pin(acks)))
    }
}

/// How many messages of one `WriteAcked` stream may be in the works at once.
pub const ACKED_IN_FLIGHT: usize = 16;

/// The ack of a refused message: the code and message a `Write` of it would have failed with.
fn refused(sequence: u64, err: Error) -> WriteAck {
    let violations = match &err {
        Error::Invalid { violations, .. } => violations
            .iter()
            .take(MAX_REPORTED_VIOLATIONS)
            .map(|v| FieldViolation { field: v.path(), description: v.reason.clone() })
            .collect(),
        _ => Vec::new(),
    };
    let status = Status::from(err);
    WriteAck { sequence, code: status.code() as i32, message: status.message().to_owned(), violations, ..WriteAck::default() }
}
