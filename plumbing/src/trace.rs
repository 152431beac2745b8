//! Trace context across the pipeline: a W3C `traceparent` read from gRPC metadata, HTTP headers and
//! Kafka message headers, a span started as its child on the global tracer (the OTLP exporter that
//! [`crate::telemetry`] installs, or nothing), and the `traceparent` to carry on in the next Kafka
//! message, only for a sampled span. A message without the header costs one header lookup: no span,
//! no allocation.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{BorrowedHeaders, Headers as _};

pub use opentelemetry::Context as TraceContext;
pub use opentelemetry::KeyValue as Attribute;

/// The W3C trace context header, in gRPC metadata, HTTP and Kafka alike.
pub const TRACEPARENT: &str = "traceparent";

/// The trace context in a Kafka message's headers, if it carries a `traceparent`.
pub fn from_kafka(headers: Option<&BorrowedHeaders>) -> Option<Context> {
    let headers = headers?;
    let carrier = KafkaCarrier(headers);
    carrier.get(TRACEPARENT)?;
    Some(TraceContextPropagator::new().extract(&carrier))
}

/// The trace context in HTTP headers (or gRPC metadata, as HTTP/2 headers), if they carry a `traceparent`.
pub fn from_http(headers: &axum::http::HeaderMap) -> Option<Context> {
    let carrier = HttpCarrier(headers);
    carrier.get(TRACEPARENT)?;
    Some(TraceContextPropagator::new().extract(&carrier))
}

/// The trace context in a gRPC request's metadata, if it carries a `traceparent`.
pub fn from_grpc(metadata: &proto::tonic::metadata::MetadataMap) -> Option<Context> {
    let carrier = GrpcCarrier(metadata);
    carrier.get(TRACEPARENT)?;
    Some(TraceContextPropagator::new().extract(&carrier))
}

/// Starts the span `name` as a child of `parent` (or as a root, sampled by the configured ratio),
/// with `attributes`; the span ends when the returned context's last clone drops, or at [`end`].
pub fn child(name: &'static str, parent: Option<&Context>, kind: SpanKind, attributes: Vec<KeyValue>) -> Context {
    let tracer = opentelemetry::global::tracer("runnel");
    let builder = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
    let parent = parent.cloned().unwrap_or_default();
    let span = tracer.build_with_context(builder, &parent);
    parent.with_span(span)
}

/// Ends the span of `cx` now.
pub fn end(cx: &Context) {
    cx.span().end();
}

/// The `traceparent` that continues `cx`'s span in a message sent on; none when the span is not
/// sampled (then nothing downstream records it either).
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

struct KafkaCarrier<'a>(&'a BorrowedHeaders);

impl Extractor for KafkaCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|h| h.key == key).and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

struct HttpCarrier<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

struct GrpcCarrier<'a>(&'a proto::tonic::metadata::MetadataMap);

impl Extractor for GrpcCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                proto::tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                proto::tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_sampled_traceparent_passes_through_with_the_same_trace() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(TRACEPARENT, PARENT.parse().unwrap());
        let parent = from_http(&headers).unwrap();
        assert_eq!(parent.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let cx = child("test", Some(&parent), SpanKind::Internal, Vec::new());
        let carried = traceparent(&cx).unwrap();
        assert!(carried.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{carried}");
        assert!(carried.ends_with("-01"), "{carried}");
    }

    #[test]
    fn no_header_no_context_and_an_unsampled_span_carries_nothing() {
        assert!(from_http(&axum::http::HeaderMap::new()).is_none());
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap());
        let unsampled = from_http(&headers).unwrap();
        assert_eq!(traceparent(&child("test", Some(&unsampled), SpanKind::Internal, Vec::new())), None);
        // No exporter installed and no parent: the root is not sampled.
        assert_eq!(traceparent(&child("test", None, SpanKind::Internal, Vec::new())), None);
    }
}
