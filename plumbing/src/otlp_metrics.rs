//! The metrics of `/metrics`, pushed over OTLP as well when `telemetry.otlp_metrics_endpoint` is set: every
//! `telemetry.metrics_interval` the registry is rendered and translated (counters to cumulative
//! monotonic sums, gauges to gauges, histograms to explicit-bucket histograms) and exported to the
//! endpoint's OTLP metrics service. One source of truth: what Prometheus scrapes is what OTLP gets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::registry::Registry;

use crate::Shutdown;

/// Where and how often a service pushes its metrics.
#[derive(Debug, Clone)]
pub struct OtlpMetrics {
    pub endpoint: String,
    pub interval: Duration,
    pub service: &'static str,
}

fn now_ns() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()).unwrap_or(u64::MAX)
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }), ..KeyValue::default() }
}

/// Pushes `registry` to `to` every interval until `shutdown`, and once more then. A failed export is
/// logged and tried again at the next interval.
pub(crate) async fn export(registry: Arc<Registry>, to: OtlpMetrics, shutdown: Shutdown) {
    let channel = match proto::tonic::transport::Endpoint::from_shared(to.endpoint.clone()) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(err) => {
            tracing::error!(endpoint = %to.endpoint, error = %err, "otlp metrics endpoint is not a URI; metrics are not pushed");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    let start_ns = now_ns();
    let mut tick = tokio::time::interval(to.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let rendered = match crate::ops::render(&registry) {
            Ok(rendered) => rendered,
            Err(err) => {
                tracing::warn!(error = %err, "metrics not rendered");
                continue;
            }
        };
        let resource = Resource { attributes: vec![text("service.name", to.service)], ..Resource::default() };
        let scope = InstrumentationScope { name: "runnel".to_owned(), ..InstrumentationScope::default() };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource),
                scope_metrics: vec![ScopeMetrics { scope: Some(scope), metrics: translate(&rendered, start_ns, now_ns()), schema_url: String::new() }],
                schema_url: String::new(),
            }],
        };
        match client.export(request).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(endpoint = %to.endpoint, "otlp metrics export works again");
            }
            Ok(_) => {}
            // Logged once per outage, not at every interval.
            Err(status) if !failing => {
                failing = true;
                tracing::warn!(endpoint = %to.endpoint, error = %status, "otlp metrics export failed; retried every interval");
            }
            Err(_) => {}
        }
        if last {
            return;
        }
    }
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One sample line: its name, its labels and its value.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else { return Some((series, Vec::new(), value)) };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || key == "}" {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        match chars.next() {
            Some(',') => continue,
            _ => break,
        }
    }
    Some((name, labels, value))
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| text(k, v)).collect()
}

fn number(labels: &[(String, String)], value: f64, start_ns: u64, now_ns: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

/// A histogram's samples of one label set, as they come.
#[derive(Default)]
struct Buckets {
    /// (upper bound, cumulative count).
    le: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// Translates OpenMetrics text (as [`crate::ops::render`] writes it) into OTLP metrics.
pub(crate) fn translate(rendered: &str, start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let mut metrics = Vec::new();
    let mut help = BTreeMap::new();
    let mut family: Option<(String, String)> = None;
    let mut numbers = Vec::new();
    let mut histograms: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
    let mut finish = |family: &mut Option<(String, String)>, numbers: &mut Vec<NumberDataPoint>, histograms: &mut BTreeMap<Vec<(String, String)>, Buckets>, help: &BTreeMap<String, String>| {
        let Some((name, kind)) = family.take() else { return };
        let data = match kind.as_str() {
            "counter" => metric::Data::Sum(Sum {
                data_points: std::mem::take(numbers),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            "gauge" => metric::Data::Gauge(Gauge { data_points: std::mem::take(numbers) }),
            "histogram" => {
                let data_points = std::mem::take(histograms)
                    .into_iter()
                    .map(|(labels, buckets)| {
                        let mut previous = 0.0;
                        let mut bucket_counts = Vec::new();
                        let mut explicit_bounds = Vec::new();
                        for (le, cumulative) in buckets.le {
                            bucket_counts.push((cumulative - previous).max(0.0) as u64);
                            previous = cumulative;
                            if le.is_finite() {
                                explicit_bounds.push(le);
                            }
                        }
                        HistogramDataPoint {
                            attributes: attributes(&labels),
                            start_time_unix_nano: start_ns,
                            time_unix_nano: now_ns,
                            count: buckets.count as u64,
                            sum: Some(buckets.sum),
                            bucket_counts,
                            explicit_bounds,
                            ..HistogramDataPoint::default()
                        }
                    })
                    .collect();
                metric::Data::Histogram(Histogram { data_points, aggregation_temporality: AggregationTemporality::Cumulative as i32 })
            }
            _ => return,
        };
        let description = help.get(&name).cloned().unwrap_or_default();
        metrics.push(Metric { name, description, data: Some(data), ..Metric::default() });
    };
    for line in rendered.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name.to_owned(), text.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            finish(&mut family, &mut numbers, &mut histograms, &help);
            if let Some((name, kind)) = rest.split_once(' ') {
                family = Some((name.to_owned(), kind.to_owned()));
            }
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else if let (Some((name, kind)), Some((sample_name, mut labels, value))) = (&family, sample(line)) {
            match kind.as_str() {
                "histogram" => {
                    let le = labels.iter().position(|(k, _)| k == "le").map(|i| labels.remove(i).1);
                    let buckets = histograms.entry(labels).or_default();
                    match (sample_name.strip_prefix(name.as_str()), le) {
                        (Some("_bucket"), Some(le)) => buckets.le.push((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) }, value)),
                        (Some("_sum"), _) => buckets.sum = value,
                        (Some("_count"), _) => buckets.count = value,
                        _ => {}
                    }
                }
                _ => numbers.push(number(&labels, value, start_ns, now_ns)),
            }
        }
    }
    finish(&mut family, &mut numbers, &mut histograms, &help);
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Scrape, Scraped, Seconds};

    #[test]
    fn counters_gauges_and_histograms_become_their_otlp_kinds() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scraped(|scrape: &mut Scrape<'_>| {
            scrape.counter("things", "things done", 7u64)?;
            // prometheus-client writes label values unescaped: Runnel's are names Kafka allows
            // ([a-zA-Z0-9._-]) and words of its own, never a quote, backslash or line break.
            scrape.gauges("depth_messages", "depth", [([("topic", "runnel.points-v1_a")], 3i64)])?;
            let latency = Seconds::default();
            latency.observe(Duration::from_millis(250));
            latency.observe(Duration::from_millis(250));
            latency.observe(Duration::from_secs(100));
            scrape.histograms("call_seconds", "latency", [([("method", "get")], &latency)])
        })));
        let metrics = translate(&crate::ops::render(&registry).unwrap(), 1, 2);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["things", "depth_messages", "call_seconds"]);
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else { panic!("{:?}", metrics[0]) };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsDouble(7.0)));
        assert_eq!(metrics[0].description, "things done");
        let Some(metric::Data::Gauge(gauge)) = &metrics[1].data else { panic!("{:?}", metrics[1]) };
        assert_eq!(gauge.data_points[0].attributes, vec![text("topic", "runnel.points-v1_a")]);
        let Some(metric::Data::Histogram(histogram)) = &metrics[2].data else { panic!("{:?}", metrics[2]) };
        let point = &histogram.data_points[0];
        assert_eq!(point.attributes, vec![text("method", "get")]);
        assert_eq!((point.count, point.sum), (3, Some(100.5)));
        // Sixteen bounds from 1 ms doubling; 250 ms falls in (128 ms, 256 ms], 100 s past the last bound.
        assert_eq!(point.explicit_bounds.len(), 16);
        assert_eq!(point.bucket_counts.len(), 17);
        assert_eq!((point.bucket_counts[8], point.bucket_counts[16]), (2, 1));
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), 3);
    }
}
