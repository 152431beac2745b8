//! The collector's metrics: requests and points by protocol and outcome, counted on plain atomics as
//! writes finish and read only when Prometheus scrapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plumbing::ops::{Registry, Scrape, Scraped};

use crate::error::Error;
use crate::ingest::Source;

/// Every refusal reason [`Error::reason`] names, in the order counted.
const REASONS: [&str; 13] = [
    "invalid",
    "bad_request",
    "too_large",
    "unsupported_media_type",
    "unsupported_encoding",
    "unauthenticated",
    "rate_limited",
    "over_burst",
    "overloaded",
    "kafka_down",
    "delivery",
    "kafka",
    "internal",
];

const SOURCES: [Source; 5] = [Source::Grpc, Source::LineProtocol, Source::RemoteWrite, Source::Otlp, Source::Json];

/// Counts per protocol.
#[derive(Debug, Default)]
struct PerSource {
    /// Requests (or stream messages) written whole or in part.
    written: AtomicU64,
    /// Requests refused, by the index of their reason in [`REASONS`].
    refused: [AtomicU64; REASONS.len()],
    points_accepted: AtomicU64,
    points_dead_lettered: AtomicU64,
    /// Points of refused requests (as many as were decoded).
    points_refused: AtomicU64,
}

/// The collector's counters, shared by every protocol's handlers.
#[derive(Debug, Default, Clone)]
pub(crate) struct IngestMetrics(Arc<[PerSource; SOURCES.len()]>);

impl IngestMetrics {
    fn of(&self, source: Source) -> &PerSource {
        &self.0[source as usize]
    }

    pub(crate) fn written(&self, source: Source, accepted: usize, dead_lettered: usize) {
        let counts = self.of(source);
        counts.written.fetch_add(1, Ordering::Relaxed);
        counts.points_accepted.fetch_add(accepted as u64, Ordering::Relaxed);
        counts.points_dead_lettered.fetch_add(dead_lettered as u64, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, source: Source, points: usize, err: &Error) {
        let counts = self.of(source);
        if let Some(reason) = REASONS.iter().position(|r| *r == err.reason()) {
            counts.refused[reason].fetch_add(1, Ordering::Relaxed);
        }
        counts.points_refused.fetch_add(points as u64, Ordering::Relaxed);
    }

    /// Registers the counters, and `in_flight` (points awaiting Kafka's acknowledgement), in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry, in_flight: impl Fn() -> usize + Send + Sync + 'static) {
        let metrics = self.clone();
        registry.register_collector(Box::new(Scraped(move |scrape: &mut Scrape<'_>| {
            let each = || SOURCES.iter().map(|s| (s.name(), metrics.of(*s)));
            let requests = each().flat_map(|(protocol, c)| {
                let written = ([("protocol", protocol), ("outcome", "written")], c.written.load(Ordering::Relaxed));
                let refused = REASONS.iter().zip(&c.refused).map(move |(reason, n)| ([("protocol", protocol), ("outcome", *reason)], n.load(Ordering::Relaxed)));
                std::iter::once(written).chain(refused)
            });
            scrape.counters("runnel_collector_requests", "requests (or stream messages) by protocol: written, or the reason for their refusal", requests)?;
            let points = each().flat_map(|(protocol, c)| {
                [("accepted", &c.points_accepted), ("dead_lettered", &c.points_dead_lettered), ("refused", &c.points_refused)]
                    .map(|(outcome, n)| ([("protocol", protocol), ("outcome", outcome)], n.load(Ordering::Relaxed)))
            });
            scrape.counters("runnel_collector_points", "points by protocol: accepted, dead-lettered from a partial batch, or refused with their request", points)?;
            scrape.gauge("runnel_collector_in_flight_points", "points written to Kafka and not yet acknowledged", in_flight() as i64)
        })));
    }
}

impl Source {
    /// The protocol label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::LineProtocol => "line_protocol",
            Self::RemoteWrite => "remote_write",
            Self::Otlp => "otlp",
            Self::Json => "json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_reason_is_counted() {
        let metrics = IngestMetrics::default();
        let errors = [
            Error::KafkaDown,
            Error::Unauthenticated("no".into()),
            Error::Overloaded { points: 1, in_flight: 2, limit: 2 },
            Error::TooLarge { what: "body".into(), limit: 1 },
        ];
        for err in &errors {
            metrics.refused(Source::Json, 3, err);
        }
        metrics.written(Source::Json, 5, 1);
        let mut registry = Registry::default();
        metrics.register(&mut registry, || 42);
        let text = plumbing::ops::render(&registry).unwrap();
        for want in [
            "runnel_collector_requests_total{protocol=\"json\",outcome=\"kafka_down\"} 1\n",
            "runnel_collector_requests_total{protocol=\"json\",outcome=\"unauthenticated\"} 1\n",
            "runnel_collector_requests_total{protocol=\"json\",outcome=\"overloaded\"} 1\n",
            "runnel_collector_requests_total{protocol=\"json\",outcome=\"too_large\"} 1\n",
            "runnel_collector_requests_total{protocol=\"json\",outcome=\"written\"} 1\n",
            "runnel_collector_requests_total{protocol=\"grpc\",outcome=\"written\"} 0\n",
            "runnel_collector_points_total{protocol=\"json\",outcome=\"refused\"} 12\n",
            "runnel_collector_points_total{protocol=\"json\",outcome=\"accepted\"} 5\n",
            "runnel_collector_points_total{protocol=\"json\",outcome=\"dead_lettered\"} 1\n",
            "runnel_collector_in_flight_points 42\n",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
