//! The store's errors, and the one place where they become gRPC statuses.

use proto::tonic::Status;
use rdkafka::error::KafkaError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable: the query itself is wrong; names the field.
    #[error("{field}: {reason}")]
    InvalidQuery { field: String, reason: String },
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("storage folder {path}: {source}")]
    Folder { path: String, source: std::io::Error },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("grpc listener: {0}")]
    Bind(std::io::Error),
    #[error("grpc server: {0}")]
    Serve(#[from] proto::tonic::transport::Error),
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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
            // Internals stay in the log; the caller learns only that it may retry.
            other => {
                tracing::error!(error = %other, "query failed");
                Status::unavailable("the store could not answer; retry")
            }
        }
    }
}
