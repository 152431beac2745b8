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
    #[error("grpc server: {0}")]
    Serve(#[from] proto::tonic::transport::Error),
}
