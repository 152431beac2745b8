//! What two or more Runnel services share, and nothing else:
//!
//! - [`changelog`]: reading back a compacted changelog topic, the state of the input partitions a
//!   service takes over;
//! - [`config`]: layered settings (defaults, file, environment) with errors that name the key;
//! - [`telemetry`]: logs and optional OpenTelemetry trace export;
//! - [`trace`]: W3C trace context from gRPC, HTTP and Kafka headers, child spans, and the
//!   `traceparent` each service carries on in its Kafka messages;
//! - [`kafka`]: the one place where Kafka client settings become an `rdkafka::ClientConfig`, with the
//!   safety rules for producers and consumers, and topic creation through the admin API;
//! - [`grpc`]: binding a listener and serving a tonic router until shutdown;
//! - [`ops`]: the HTTP listener for liveness, readiness and Prometheus metrics, the readiness that
//!   gRPC health follows, the metrics every service has, and the drain deadline of a stop;
//! - [`otlp_metrics`]: the metrics of `/metrics` pushed over OTLP too, when an endpoint is set;
//! - [`reload`]: a file of definitions reloaded on SIGHUP or when it changes (alert rules, windows);
//! - [`shutdown`]: the cancellation signal that SIGTERM and SIGINT raise;
//! - [`service`]: the common body of every service binary (arguments, settings, exit codes);
//! - [`txn`]: the exactly-once output, a transactional producer with a deadline on every call, which
//!   the processor and the analyzer both commit through, and when they commit.
//!
//! Domain logic (validation, windows, storage, models) belongs to the services, never here.

pub mod changelog;
pub mod config;
pub mod grpc;
pub mod kafka;
pub mod ops;
pub mod otlp_metrics;
pub mod reload;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod txn;

pub use shutdown::Shutdown;
