//! The collector's errors, and the one place where they become gRPC statuses.

use proto::tonic::{Code, Status};
use proto::tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use rdkafka::error::KafkaError;

use crate::validate::Violation;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many violations a refusal lists in its details; a batch of garbage must not make a huge answer.
const MAX_REPORTED_VIOLATIONS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable: the request itself is wrong.
    #[error("{}", describe(.context, .violations))]
    Invalid { context: String, violations: Vec<Violation> },
    /// Retryable: Kafka did not acknowledge every point of a batch within its delivery timeout.
    #[error("kafka did not acknowledge {failed} of {total} points ({source}); the batch may be partly written")]
    Delivery { failed: usize, total: usize, source: KafkaError },
    /// Retryable: too many points already await Kafka's acknowledgement (Kafka is slow or away).
    #[error("overloaded: {in_flight} points await kafka's acknowledgement and {points} more would pass the limit of {limit}; retry later")]
    Overloaded { points: usize, in_flight: usize, limit: usize },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("grpc listener: {0}")]
    Bind(std::io::Error),
    #[error("grpc server: {0}")]
    Serve(#[from] proto::tonic::transport::Error),
}

fn describe(context: &str, violations: &[Violation]) -> String {
    let first = violations.first().map(ToString::to_string).unwrap_or_default();
    match violations.len() {
        1 => format!("{context}{first}"),
        n => format!("{context}{first} (and {} more violations)", n - 1),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::Invalid { violations, .. } => {
                let details: Vec<FieldViolation> = violations
                    .into_iter()
                    .take(MAX_REPORTED_VIOLATIONS)
                    .map(|v| FieldViolation::new(v.field, v.reason))
                    .collect();
                Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(details))
            }
            Error::Overloaded { .. } => Status::resource_exhausted(message),
            Error::Delivery { .. } | Error::Kafka(_) => Status::unavailable(message),
            Error::Bind(_) | Error::Serve(_) => Status::internal(message),
        }
    }
}
