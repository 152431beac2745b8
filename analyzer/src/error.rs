//! The analyzer's errors.

use rdkafka::error::KafkaError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("alert delivery failed: {0}")]
    Delivery(KafkaError),
    #[error("grpc listener: {0}")]
    Bind(std::io::Error),
    /// The ops listener (`/livez`, `/readyz`, `/metrics`) could not bind or serve.
    #[error("ops listener: {0}")]
    Ops(std::io::Error),
    #[error("grpc server: {0}")]
    Serve(#[from] proto::tonic::transport::Error),
    /// A watcher cannot resume where it asked to.
    #[error("cannot resume there: {0}")]
    Resume(String),
    #[error("internal: {0}")]
    Internal(String),
    #[error("alert rules: {0}")]
    Rules(String),
    /// A partition's series could not be read back from the changelog.
    #[error("restore: {0}")]
    Restore(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl From<Error> for proto::tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Resume(_) => Self::out_of_range(err.to_string()),
            // The broker may come back: a client retries.
            Error::Kafka(_) | Error::Delivery(_) => Self::unavailable(err.to_string()),
            Error::Bind(_) | Error::Ops(_) | Error::Serve(_) | Error::Internal(_) | Error::Rules(_) | Error::Restore(_) | Error::Config(_) => {
                Self::internal(err.to_string())
            }
        }
    }
}
