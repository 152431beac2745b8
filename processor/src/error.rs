//! The processor's errors.

use rdkafka::error::KafkaError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Output that Kafka did not acknowledge: the processor stops without committing the input offsets,
    /// so the next owner of the partitions produces it again.
    #[error("aggregate delivery failed: {0}")]
    Delivery(KafkaError),
    /// A partition's windows could not be read back from the changelog: a record is unreadable.
    #[error("restore: {0}")]
    Restore(String),
    /// The changelog could not be read to its committed end in time (a broker failing over, say).
    #[error("restore: {0}")]
    RestoreTimeout(String),
    #[error("settings: {0}")]
    Config(String),
    #[error("processor task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kafka(_) | Self::RestoreTimeout(_))
    }
}
