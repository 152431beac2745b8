//! The ingest gRPC service: validate a whole batch, then write it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use proto::tonic::{Request, Response, Status, Streaming};
use proto::v1::ingest_service_server::IngestService;
use proto::v1::{Point, WriteRequest, WriteResponse};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::kafka::PointSink;
use crate::validate::validate_batch;

#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    limits: Arc<Limits>,
    sink: PointSink,
}

impl Ingest {
    pub(crate) fn new(limits: Limits, sink: PointSink) -> Self {
        Self { limits: Arc::new(limits), sink }
    }

    async fn write_batch(&self, points: &[Point], context: impl FnOnce() -> String) -> Result<()> {
        validate_batch(points, &self.limits, now_ns())
            .map_err(|violations| Error::Invalid { context: context(), violations })?;
        if points.is_empty() {
            return Ok(());
        }
        self.sink.write(points).await
    }
}

fn now_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

#[proto::tonic::async_trait]
impl IngestService for Ingest {
    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let points = request.into_inner().points;
        self.write_batch(&points, String::new).await?;
        Ok(Response::new(WriteResponse { accepted: points.len() as u64 }))
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let mut accepted = 0u64;
        let mut index = 0usize;
        while let Some(message) = stream.next().await {
            let points = message?.points;
            let prior = accepted;
            self.write_batch(&points, || {
                format!("stream message {index} refused, {prior} points of earlier messages accepted: ")
            })
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
            accepted += points.len() as u64;
            index += 1;
        }
        Ok(Response::new(WriteResponse { accepted }))
    }
}
