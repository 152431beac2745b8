//! The collector's errors, and the one place where they become gRPC statuses and HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::tonic::{Code, Status};
use proto::tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use rdkafka::error::KafkaError;

use crate::validate::Violation;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many violations a refusal lists in its details; a batch of garbage must not make a huge answer.
pub(crate) const MAX_REPORTED_VIOLATIONS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable: the request itself is wrong.
    #[error("{}", describe(.context, .violations))]
    Invalid { context: String, violations: Vec<Violation> },
    /// Retryable: Kafka did not acknowledge every point of a batch within its delivery timeout.
    #[error("kafka did not acknowledge {failed} of {total} points ({source}); the batch may be partly written")]
    Delivery { failed: usize, total: usize, source: KafkaError },
    /// Retryable: librdkafka reports every broker down; nothing was queued.
    #[error("kafka is unavailable: every broker is down; retry later")]
    KafkaDown,
    /// Retryable: too many points already await Kafka's acknowledgement (Kafka is slow or away).
    #[error("overloaded: {in_flight} points await kafka's acknowledgement and {points} more would pass the limit of {limit}; retry later")]
    Overloaded { points: usize, in_flight: usize, limit: usize },
    /// Not retryable: a request's parameter or body cannot be read at all.
    #[error("{what}: {reason}")]
    BadRequest { what: String, reason: String },
    /// Not retryable as it is: the request passes a size limit (split it).
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: String, limit: usize },
    /// Not retryable: no API token, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Retryable after `retry_after`: the token's rate limit.
    #[error("tenant {tenant:?} is over its rate limit: {points} more points must wait {retry_after:?}")]
    RateLimited { tenant: String, points: usize, retry_after: std::time::Duration },
    /// Not retryable as it is: more points at once than the token's burst allows (split the request).
    #[error("{points} points at once exceed tenant {tenant:?}'s burst; split the request")]
    OverBurst { tenant: String, points: usize },
    /// Not retryable: a `Content-Type` the endpoint does not take.
    #[error("content type {0}")]
    UnsupportedMediaType(String),
    /// Not retryable: a `Content-Encoding` other than gzip.
    #[error("content encoding {0} is not supported; send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A TLS file that cannot be read or used; `key` is the setting that names it.
    #[error("{key} {path}: {reason}")]
    Tls { key: String, path: String, reason: String },
    #[error("grpc listener: {0}")]
    Bind(std::io::Error),
    #[error("grpc server: {0}")]
    Serve(#[from] proto::tonic::transport::Error),
    #[error("http listener: {0}")]
    HttpBind(std::io::Error),
    #[error("http server: {0}")]
    HttpServe(std::io::Error),
    #[error("ops listener: {0}")]
    OpsBind(std::io::Error),
    #[error("ops server: {0}")]
    OpsServe(std::io::Error),
}

impl Error {
    /// The reason label of a refusal in the collector's metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::BadRequest { .. } => "bad_request",
            Self::TooLarge { .. } => "too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::RateLimited { .. } => "rate_limited",
            Self::OverBurst { .. } => "over_burst",
            Self::Overloaded { .. } => "overloaded",
            Self::KafkaDown => "kafka_down",
            Self::Delivery { .. } => "delivery",
            Self::Kafka(_) => "kafka",
            // Startup errors: no request ends with one.
            Self::Tls { .. } | Self::Bind(_) | Self::Serve(_) | Self::HttpBind(_) | Self::HttpServe(_) | Self::OpsBind(_) | Self::OpsServe(_) => "internal",
        }
    }

    /// Whether the same request may succeed later; what a client's retry policy needs.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Overloaded { .. } | Self::RateLimited { .. } | Self::KafkaDown | Self::Delivery { .. } | Self::Kafka(_))
    }
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
                    .map(|v| FieldViolation::new(v.path(), v.reason))
                    .collect();
                Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(details))
            }
            Error::BadRequest { .. } | Error::UnsupportedEncoding(_) | Error::UnsupportedMediaType(_) | Error::OverBurst { .. } => {
                Status::invalid_argument(message)
            }
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::Overloaded { .. } | Error::RateLimited { .. } | Error::TooLarge { .. } => Status::resource_exhausted(message),
            Error::KafkaDown | Error::Delivery { .. } | Error::Kafka(_) => Status::unavailable(message),
            Error::Bind(_) | Error::Serve(_) | Error::HttpBind(_) | Error::HttpServe(_) | Error::OpsBind(_) | Error::OpsServe(_) | Error::Tls { .. } => Status::internal(message),
        }
    }
}

/// Seconds a client should wait before retrying an overloaded collector: in-flight points are
/// acknowledged within milliseconds when Kafka is healthy.
const OVERLOADED_RETRY_AFTER_SECS: u32 = 1;
/// Seconds before retrying when Kafka did not acknowledge: a broker failover takes seconds.
const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

/// The HTTP answer: a status, `Retry-After` when retrying helps, and a JSON body in InfluxDB's error
/// shape (`code`, `message`) with every violation listed as `errors[]` (`index`, `line`, `field`,
/// `reason`). Too many points in one request answers 413 like a too-large body, so that Telegraf
/// splits the batch and retries instead of dropping it.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, retry_after) = match &self {
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            Error::RateLimited { retry_after, .. } => {
                let secs = u32::try_from(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).unwrap_or(u32::MAX);
                (StatusCode::TOO_MANY_REQUESTS, "too many requests", Some(secs))
            }
            Error::OverBurst { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request too large", None),
            Error::Invalid { violations, .. } if violations.iter().any(Violation::is_batch_size) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "request too large", None)
            }
            Error::Invalid { .. } | Error::BadRequest { .. } => (StatusCode::BAD_REQUEST, "invalid", None),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request too large", None),
            Error::UnsupportedEncoding(_) | Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type", None),
            Error::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "too many requests", Some(OVERLOADED_RETRY_AFTER_SECS)),
            Error::KafkaDown | Error::Delivery { .. } | Error::Kafka(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(UNAVAILABLE_RETRY_AFTER_SECS))
            }
            Error::Bind(_) | Error::Serve(_) | Error::HttpBind(_) | Error::HttpServe(_) | Error::OpsBind(_) | Error::OpsServe(_) | Error::Tls { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error", None)
            }
        };
        let errors: Vec<serde_json::Value> = match &self {
            Error::Invalid { violations, .. } => violations
                .iter()
                .take(MAX_REPORTED_VIOLATIONS)
                .map(|v| serde_json::json!({ "index": v.index, "line": v.line, "field": v.field, "reason": v.reason }))
                .collect(),
            _ => Vec::new(),
        };
        let body = serde_json::json!({ "code": code, "message": message, "errors": errors }).to_string();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(err: Error) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = err.into_response();
        let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap_or_default().to_owned());
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
        (status, retry_after, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn overload_and_kafka_trouble_say_when_to_retry() {
        let (status, retry_after, body) = answer(Error::Overloaded { points: 10, in_flight: 195, limit: 200 }).await;
        assert_eq!((status, retry_after.as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("1")));
        assert_eq!(body["code"], "too many requests");
        let timed_out = KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
        let (status, retry_after, body) = answer(Error::Delivery { failed: 3, total: 5, source: timed_out }).await;
        assert_eq!((status, retry_after.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("5")));
        assert_eq!(body["message"], "kafka did not acknowledge 3 of 5 points (Message production error: MessageTimedOut (Local: Message timed out)); the batch may be partly written");
        assert!(Error::Overloaded { points: 1, in_flight: 0, limit: 1 }.is_retryable());
    }

    #[tokio::test]
    async fn a_refused_batch_lists_every_violation() {
        let violations = vec![
            Violation { index: Some(0), line: Some(2), field: "metric".into(), reason: "must not be empty".into() },
            Violation { index: None, line: Some(5), field: "line".into(), reason: "No fields were provided".into() },
        ];
        let (status, retry_after, body) = answer(Error::Invalid { context: String::new(), violations }).await;
        assert_eq!((status, retry_after), (StatusCode::BAD_REQUEST, None));
        assert_eq!(
            body,
            serde_json::json!({
                "code": "invalid",
                "message": "line 2: points[0].metric: must not be empty (and 1 more violations)",
                "errors": [
                    { "index": 0, "line": 2, "field": "metric", "reason": "must not be empty" },
                    { "index": null, "line": 5, "field": "line", "reason": "No fields were provided" },
                ],
            })
        );
    }
}
