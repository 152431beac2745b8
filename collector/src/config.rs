//! The collector's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::ops::OpsSettings;
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the ingest gRPC service listens.
    pub grpc: GrpcSettings,
    /// Where the HTTP endpoints listen: InfluxDB's `/api/v2/write` (line protocol), Prometheus remote
    /// write (`/api/v1/write`) and JSON batches (`/api/v1/points`).
    pub http: HttpSettings,
    /// TLS on both listeners (gRPC and HTTP); none serves plaintext, which is only safe on loopback.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// What a point must satisfy to be accepted.
    pub limits: Limits,
    /// Who may write. With no token the collector is open: keep it on loopback then.
    // No tokens serialize to an empty table, which the layered loading drops: default it back.
    #[serde(default)]
    pub auth: AuthSettings,
    /// Per source: whether a batch with invalid points is refused whole (false, the default) or its
    /// valid points are written and each invalid one goes to the dead-letter topic with its raw bytes
    /// and why.
    pub accept_partial: AcceptPartial,
    pub telemetry: TelemetrySettings,
    /// The operations listener (`/livez`, `/readyz`, `/metrics`) and the drain deadline of a stop.
    pub ops: OpsSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSettings {
    /// Listen address; port 0 lets the OS choose.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address; port 0 lets the OS choose. 8086 is InfluxDB's, so that its clients need only
    /// the host changed.
    pub listen: SocketAddr,
}

/// The server's certificate, and for mutual TLS the CAs a client's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server's certificate chain, its own certificate first.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates that sign client certificates; when set, every client must
    /// present a certificate that chains to one of them (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Where accepted points go.
    pub points: TopicSettings,
    /// Where the invalid points of partially accepted batches go.
    pub deadletter: TopicSettings,
}

/// Partial acceptance per source; see [`Settings::accept_partial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptPartial {
    /// gRPC `Write`, `WriteStream` and `WriteAcked`.
    pub grpc: bool,
    /// InfluxDB line protocol (`/api/v2/write`); a line that is not line protocol is dead-lettered too.
    pub line_protocol: bool,
    /// Prometheus remote write.
    pub remote_write: bool,
    /// OTLP metrics, gRPC and HTTP.
    pub otlp: bool,
    /// JSON batches (`/api/v1/points`).
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// API tokens, each mapped to a tenant; when any is set, every request must present one.
    #[serde(default)]
    pub tokens: Vec<TokenSettings>,
}

/// One API token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The secret a client presents (`Authorization: Token <token>` or `Bearer <token>`); at least 16
    /// characters.
    pub token: String,
    /// Stamped as the `tenant` tag on every point written with this token; a point may not carry
    /// another tenant.
    pub tenant: String,
    /// Points per second this token may write, on average; none means no limit.
    pub points_per_second: Option<u32>,
    /// Points this token may write at once before the rate applies; defaults to one second's worth.
    pub burst_points: Option<u32>,
    /// Most distinct series this tenant may write through one collector (kept in memory per
    /// instance); a point of a series past it is refused like an invalid one. None means no limit.
    pub max_series: Option<usize>,
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("TokenSettings")
            .field("tenant", &self.tenant)
            .field("points_per_second", &self.points_per_second)
            .field("burst_points", &self.burst_points)
            .field("max_series", &self.max_series)
            .finish_non_exhaustive()
    }
}

/// The shortest token accepted: shorter secrets can be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// Validation limits; see `validate` for the rules they bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most points in one batch (one gRPC message, one HTTP request).
    pub max_batch_points: usize,
    /// Largest HTTP request body as sent, in bytes; past it the answer is 413.
    pub max_request_bytes: usize,
    /// Largest HTTP request body once inflated, in bytes: a gzip body is inflated only this far, so a
    /// gzip bomb costs at most this much memory before it is refused with 413.
    pub max_decompressed_bytes: usize,
    /// Most points awaiting Kafka's acknowledgement at once, over all calls; a batch that does not fit
    /// is refused with `RESOURCE_EXHAUSTED` (retry later). At least `max_batch_points`.
    pub max_in_flight_points: usize,
    /// Longest metric name, in bytes.
    pub max_metric_len: usize,
    /// Most tags on one point.
    pub max_tags: usize,
    /// Longest tag name, in bytes.
    pub max_tag_name_len: usize,
    /// Longest tag value, in bytes.
    pub max_tag_value_len: usize,
    /// Oldest accepted event time, relative to the collector's clock.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Furthest accepted event time in the future, relative to the collector's clock: one bad clock must
    /// not make everybody else's data late.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings { listen: SocketAddr::from(([127, 0, 0, 1], 50051)) },
            http: HttpSettings { listen: SocketAddr::from(([127, 0, 0, 1], 8086)) },
            tls: None,
            kafka: KafkaSettings::default(),
            topics: Topics { points: TopicSettings::new(topics::POINTS), deadletter: TopicSettings::new(topics::DEADLETTER) },
            limits: Limits::default(),
            auth: AuthSettings::default(),
            accept_partial: AcceptPartial::default(),
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(9464),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_points: 10_000,
            max_request_bytes: 8 * 1024 * 1024,
            max_decompressed_bytes: 32 * 1024 * 1024,
            max_in_flight_points: 200_000,
            max_metric_len: 256,
            max_tags: 32,
            max_tag_name_len: 128,
            max_tag_value_len: 256,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(5 * 60),
        }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        errors.extend(self.topics.points.validate("topics.points"));
        errors.extend(self.topics.deadletter.validate("topics.deadletter"));
        errors.extend(self.telemetry.validate("telemetry"));
        errors.extend(self.ops.validate("ops"));
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_batch_points", l.max_batch_points),
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_decompressed_bytes", l.max_decompressed_bytes),
            ("limits.max_metric_len", l.max_metric_len),
            ("limits.max_tag_name_len", l.max_tag_name_len),
            ("limits.max_tag_value_len", l.max_tag_value_len),
        ] {
            check(&mut errors, value >= 1, key, format!("{value} must be at least 1"));
        }
        check(&mut errors, !l.max_age.is_zero(), "limits.max_age", "must be positive");
        check(
            &mut errors,
            l.max_in_flight_points >= l.max_batch_points && u32::try_from(l.max_in_flight_points).is_ok(),
            "limits.max_in_flight_points",
            format!("{} must be at least limits.max_batch_points ({}) and at most {}", l.max_in_flight_points, l.max_batch_points, u32::MAX),
        );
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            check(&mut errors, t.token.chars().count() >= MIN_TOKEN_LEN, &format!("{key}.token"), format!("must be at least {MIN_TOKEN_LEN} characters"));
            check(&mut errors, self.auth.tokens[..i].iter().all(|o| o.token != t.token), &format!("{key}.token"), "is also an earlier token's");
            check(
                &mut errors,
                !t.tenant.is_empty() && t.tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
                &format!("{key}.tenant"),
                format!("{:?} must be non-empty letters, digits, '_', '.' or '-'", t.tenant),
            );
            check(&mut errors, t.points_per_second != Some(0), &format!("{key}.points_per_second"), "must be positive; leave it out for no limit");
        }
        errors
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }

    fn ops(&self) -> &OpsSettings {
        &self.ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_limit_must_hold_a_whole_batch() {
        assert_eq!(Settings::default().validate(), Vec::new());
        let mut s = Settings::default();
        s.limits.max_in_flight_points = s.limits.max_batch_points - 1;
        let keys: Vec<String> = s.validate().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["limits.max_in_flight_points"]);
    }

    #[test]
    fn tokens_must_be_long_unique_and_name_a_tenant() {
        let token = |token: &str, tenant: &str, rate: Option<u32>| TokenSettings { token: token.into(), tenant: tenant.into(), points_per_second: rate, burst_points: None, max_series: None };
        let mut s = Settings::default();
        s.auth.tokens = vec![
            token("0123456789abcdef", "fleet-a", Some(100)),
            token("short", "b", None),
            token("0123456789abcdef", "c", None),
            token("fedcba9876543210", "has space", Some(0)),
        ];
        let keys: Vec<String> = s.validate().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["auth.tokens[1].token", "auth.tokens[2].token", "auth.tokens[3].tenant", "auth.tokens[3].points_per_second"]);
        assert!(!format!("{:?}", s.auth).contains("0123456789abcdef"), "a token never shows in Debug output");
    }
}
