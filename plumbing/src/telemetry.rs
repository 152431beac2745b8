//! Telemetry: structured logs to stderr, and OpenTelemetry trace export over OTLP when an endpoint is
//! configured (off by default, so a local run needs nothing else), sampled by the writer's decision
//! or else by `sample_ratio`; metrics go to their own endpoint, if any (`crate::otlp_metrics`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{FieldError, check};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info,rdkafka=warn`.
    pub log: String,
    /// OTLP gRPC endpoint for traces, e.g. `http://127.0.0.1:4317`; empty turns export off.
    pub otlp_endpoint: String,
    /// The fraction of writes traced when the writer sent no trace context (0 to 1); a write that
    /// carries a `traceparent` follows its sampling decision.
    pub sample_ratio: f64,
    /// OTLP gRPC endpoint the metrics (those `/metrics` shows) are pushed to; empty turns it off, as
    /// where Prometheus scrapes.
    pub otlp_metrics_endpoint: String,
    /// How often the metrics are pushed to `otlp_metrics_endpoint`.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: std::time::Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { log: "info".to_owned(), otlp_endpoint: String::new(), sample_ratio: 0.01, otlp_metrics_endpoint: String::new(), metrics_interval: std::time::Duration::from_secs(15) }
    }
}

impl TelemetrySettings {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(err) = EnvFilter::try_new(&self.log) {
            errors.push(FieldError::new(format!("{prefix}.log"), err));
        }
        for (key, endpoint) in [("otlp_endpoint", &self.otlp_endpoint), ("otlp_metrics_endpoint", &self.otlp_metrics_endpoint)] {
            check(
                &mut errors,
                endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                &format!("{prefix}.{key}"),
                format!("{endpoint:?} must be empty or an http(s) URL"),
            );
        }
        check(
            &mut errors,
            (0.0..=1.0).contains(&self.sample_ratio),
            &format!("{prefix}.sample_ratio"),
            format!("{} must be within [0, 1]", self.sample_ratio),
        );
        check(&mut errors, !self.metrics_interval.is_zero(), &format!("{prefix}.metrics_interval"), "must be positive");
        errors
    }
}

/// Flushes exported traces when dropped; keep it alive for the life of the process.
#[derive(Debug)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown() {
                eprintln!("trace export shutdown failed: {err}");
            }
    }
}

/// Installs the global subscriber for `service`. Must be called once, from within a tokio runtime when
/// OTLP export is on.
pub fn init(service: &'static str, settings: &TelemetrySettings) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_new(&settings.log)?;
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter);
    if settings.otlp_endpoint.is_empty() {
        tracing_subscriber::registry().with(fmt).try_init()?;
        return Ok(Guard { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&settings.otlp_endpoint)
        .build()?;
    // A write with a trace context follows its decision; one without is traced at the ratio.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    // The pipeline's own spans (`crate::trace`) go through the global provider.
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    tracing_subscriber::registry().with(fmt).with(otel).try_init()?;
    Ok(Guard { provider: Some(provider) })
}
