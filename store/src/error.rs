//! The store's errors, and the one place where they become gRPC statuses.

use proto::tonic::Status;
use rdkafka::error::KafkaError;

use crate::objects::ObjectsError;
use crate::segment::SegmentError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable: the query itself is wrong; names the field.
    #[error("{field}: {reason}")]
    InvalidQuery { field: String, reason: String },
    /// Not retryable as it is: the answer would exceed a configured limit.
    #[error("{what} would exceed the limit of {limit}; narrow the selector or the time range")]
    TooLarge { what: &'static str, limit: u64 },
    /// Not retryable as it is: the query needs more memory than it may use.
    #[error("the query needs more memory than allowed: {0}")]
    Exhausted(String),
    /// Retryable on a lighter load: the query ran past the configured query time.
    #[error("the query ran longer than the limit of {0:?}")]
    Timeout(std::time::Duration),
    #[error("object store: {0}")]
    Objects(#[from] ObjectsError),
    #[error("segment: {0}")]
    Segment(#[from] SegmentError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("sql executor: {0}")]
    Executor(std::io::Error),
    #[error("grpc listener: {0}")]
    Bind(std::io::Error),
    /// The ops listener (`/livez`, `/readyz`, `/metrics`) could not bind or serve.
    #[error("ops listener: {0}")]
    Ops(std::io::Error),
    #[error("grpc server: {0}")]
    Serve(#[from] proto::tonic::transport::Error),
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A broken invariant: a bug, logged in full.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::InvalidQuery { field: field.into(), reason: reason.to_string() }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidQuery { .. } => Status::invalid_argument(err.to_string()),
            Error::TooLarge { .. } | Error::Exhausted(_) => Status::resource_exhausted(err.to_string()),
            Error::Timeout(_) => Status::deadline_exceeded(err.to_string()),
            // Internals stay in the log; the caller learns only that it may retry.
            other => {
                tracing::error!(error = %other, "query failed");
                Status::unavailable("the store could not answer; retry")
            }
        }
    }
}
