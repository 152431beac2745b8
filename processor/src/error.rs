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
    #[error("ops listener: {0}")]
    OpsBind(std::io::Error),
    #[error("ops server: {0}")]
    OpsServe(std::io::Error),
    /// The SIGHUP handler of the windows file's reload could not be installed.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

impl Error {
    /// Whether trying again later may succeed: not for a refused authorization or a client that cannot be
    /// built, which only a change of settings cures.
    pub fn is_transient(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self {
            Self::RestoreTimeout(_) => true,
            Self::Kafka(KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..)) => false,
            Self::Kafka(err) => !matches!(
                err.rdkafka_error_code(),
                Some(
                    Code::TopicAuthorizationFailed
                        | Code::GroupAuthorizationFailed
                        | Code::ClusterAuthorizationFailed
                        | Code::TransactionalIdAuthorizationFailed
                        | Code::SaslAuthenticationFailed
                        | Code::Authentication
                )
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn only_what_time_can_cure_is_transient() {
        assert!(Error::RestoreTimeout("x".into()).is_transient());
        assert!(Error::Kafka(KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable)).is_transient());
        assert!(!Error::Kafka(KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed)).is_transient());
        assert!(!Error::Kafka(KafkaError::ClientCreation("bad".into())).is_transient());
        assert!(!Error::Restore("bad record".into()).is_transient());
    }
}
