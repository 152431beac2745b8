//! Telemetry: structured logs to stderr, and OpenTelemetry trace export over OTLP when an endpoint is
//! configured (off by default, so a local run needs nothing else).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
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
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { log: "info".to_owned(), otlp_endpoint: String::new() }
    }
}

impl TelemetrySettings {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(err) = EnvFilter::try_new(&self.log) {
            errors.push(FieldError::new(format!("{prefix}.log"), err));
        }
        let endpoint = &self.otlp_endpoint;
        check(
            &mut errors,
            endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://"),
            &format!("{prefix}.otlp_endpoint"),
            format!("{endpoint:?} must be empty or an http(s) URL"),
        );
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
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    tracing_subscriber::registry().with(fmt).with(otel).try_init()?;
    Ok(Guard { provider: Some(provider) })
}
