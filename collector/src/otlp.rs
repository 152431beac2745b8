//! OpenTelemetry metrics (OTLP) to points: pure functions over an `ExportMetricsServiceRequest`, no IO.
//! The messages are the `opentelemetry-proto` crate's.
//!
//! The mapping, documented in the README:
//! - tags: the data point's attributes, plus the resource's identifying attributes `service.name`,
//!   `service.namespace`, `service.instance.id` and `host.name` (other resource attributes describe the
//!   process and would multiply series); scalar values as text, arrays and maps as JSON;
//! - gauge and sum: one point per data point, the metric's name, its value (temporality is not
//!   converted: a cumulative sum stays a running total);
//! - histogram: `<name>_count`, `<name>_sum`, `<name>_min`, `<name>_max` (those present) and one
//!   `<name>_bucket` per bucket with tag `le`, counts cumulative as Prometheus writes them, the last `+Inf`;
//! - exponential histogram: `<name>_count`, `<name>_sum`, `<name>_min`, `<name>_max` (buckets are not
//!   mapped); summary: `<name>_count`, `<name>_sum` and `<name>` with tag `quantile` per quantile;
//! - a data point flagged "no recorded value", or whose value is not a finite number, makes no point: it is
//!   counted and the count returned.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as AnyValueMessage, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::metrics::v1::{DataPointFlags, NumberDataPoint};
use proto::v1::Point;

use crate::validate::Violation;

/// Resource attributes that identify where a metric comes from, and so become tags.
const IDENTIFYING: [&str; 4] = ["service.name", "service.namespace", "service.instance.id", "host.name"];

/// The points of a request, each with where in the request it came from.
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    pub points: Vec<Point>,
    /// For each point, its metric's path in the request: `resource_metrics[0].scope_metrics[1].metrics[2]`.
    pub origins: Vec<String>,
    /// Data points with no recorded value or a value that is not a finite number.
    pub ignored: usize,
}

/// Maps every data point; a timestamp that does not fit in 64-bit nanoseconds is a violation naming
/// the metric's path, and every such point is reported.
pub fn map(request: ExportMetricsServiceRequest) -> Result<Mapped, Vec<Violation>> {
    let mut out = Out::default();
    for (r, resource_metrics) in request.resource_metrics.into_iter().enumerate() {
        let resource_tags: BTreeMap<String, String> = resource_metrics
            .resource
            .map(|resource| resource.attributes)
            .unwrap_or_default()
            .into_iter()
            .filter(|kv| IDENTIFYING.contains(&kv.key.as_str()))
            .filter_map(attribute)
            .collect();
        for (s, scope_metrics) in resource_metrics.scope_metrics.into_iter().enumerate() {
            for (m, metric) in scope_metrics.metrics.into_iter().enumerate() {
                let origin = format!("resource_metrics[{r}].scope_metrics[{s}].metrics[{m}]");
                out.metric(&origin, &metric.name, metric.data, &resource_tags);
            }
        }
    }
    if out.violations.is_empty() { Ok(out.mapped) } else { Err(out.violations) }
}

#[derive(Default)]
struct Out {
    mapped: Mapped,
    violations: Vec<Violation>,
}

impl Out {
    fn metric(&mut self, origin: &str, name: &str, data: Option<Data>, resource_tags: &BTreeMap<String, String>) {
        let tags_of = |attributes: Vec<KeyValue>| {
            let mut tags = resource_tags.clone();
            tags.extend(attributes.into_iter().filter_map(attribute));
            tags
        };
        match data {
            None => {}
            Some(Data::Gauge(gauge)) => self.numbers(origin, name, gauge.data_points, tags_of),
            Some(Data::Sum(sum)) => self.numbers(origin, name, sum.data_points, tags_of),
            Some(Data::Histogram(histogram)) => {
                for p in histogram.data_points {
                    let Some(ts) = self.recorded(origin, p.flags, p.time_unix_nano) else { continue };
                    let tags = tags_of(p.attributes);
                    self.summary_parts(origin, name, ts, &tags, p.count, p.sum, p.min, p.max);
                    // Cumulative counts per upper bound, as Prometheus's `le` buckets are.
                    let mut cumulative = 0u64;
                    for (i, count) in p.bucket_counts.iter().enumerate() {
                        cumulative = cumulative.saturating_add(*count);
                        let le = p.explicit_bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                        let mut bucket_tags = tags.clone();
                        bucket_tags.insert("le".to_owned(), le);
                        #[allow(clippy::cast_precision_loss)] // counts are exact up to 2^53
                        self.push(origin, format!("{name}_bucket"), bucket_tags, ts, cumulative as f64);
                    }
                }
            }
            Some(Data::ExponentialHistogram(histogram)) => {
                for p in histogram.data_points {
                    let Some(ts) = self.recorded(origin, p.flags, p.time_unix_nano) else { continue };
                    let tags = tags_of(p.attributes);
                    self.summary_parts(origin, name, ts, &tags, p.count, p.sum, p.min, p.max);
                }
            }
            Some(Data::Summary(summary)) => {
                for p in summary.data_points {
                    let Some(ts) = self.recorded(origin, p.flags, p.time_unix_nano) else { continue };
                    let tags = tags_of(p.attributes);
                    self.summary_parts(origin, name, ts, &tags, p.count, Some(p.sum), None, None);
                    for q in p.quantile_values {
                        let mut quantile_tags = tags.clone();
                        quantile_tags.insert("quantile".to_owned(), q.quantile.to_string());
                        self.push(origin, name.to_owned(), quantile_tags, ts, q.value);
                    }
                }
            }
        }
    }

    fn numbers(&mut self, origin: &str, name: &str, points: Vec<NumberDataPoint>, tags_of: impl Fn(Vec<KeyValue>) -> BTreeMap<String, String>) {
        for p in points {
            #[allow(clippy::cast_precision_loss)] // documented: integers are exact up to 2^53
            let value = match p.value {
                Some(Number::AsDouble(v)) => v,
                Some(Number::AsInt(v)) => v as f64,
                None => f64::NAN,
            };
            let Some(ts) = self.recorded(origin, p.flags, p.time_unix_nano) else { continue };
            self.push(origin, name.to_owned(), tags_of(p.attributes), ts, value);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn summary_parts(
        &mut self,
        origin: &str,
        name: &str,
        ts: i64,
        tags: &BTreeMap<String, String>,
        count: u64,
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    ) {
        #[allow(clippy::cast_precision_loss)] // counts are exact up to 2^53
        self.push(origin, format!("{name}_count"), tags.clone(), ts, count as f64);
        for (suffix, value) in [("sum", sum), ("min", min), ("max", max)] {
            if let Some(value) = value {
                self.push(origin, format!("{name}_{suffix}"), tags.clone(), ts, value);
            }
        }
    }

    /// The data point's time, unless it has no recorded value (counted) or a time past i64 (refused).
    fn recorded(&mut self, origin: &str, flags: u32, time_unix_nano: u64) -> Option<i64> {
        if flags & (DataPointFlags::NoRecordedValueMask as u32) != 0 {
            self.mapped.ignored += 1;
            return None;
        }
        self.time(origin, time_unix_nano)
    }

    fn time(&mut self, origin: &str, time_unix_nano: u64) -> Option<i64> {
        let ts = i64::try_from(time_unix_nano).ok();
        if ts.is_none() {
            self.violations.push(Violation {
                index: None,
                line: None,
                field: format!("{origin}.time_unix_nano"),
                reason: format!("{time_unix_nano} does not fit in 64-bit nanoseconds"),
            });
        }
        ts
    }

    fn push(&mut self, origin: &str, metric: String, tags: BTreeMap<String, String>, timestamp_ns: i64, value: f64) {
        if !value.is_finite() {
            self.mapped.ignored += 1;
            return;
        }
        self.mapped.points.push(Point { metric, tags, timestamp_ns, value });
        self.mapped.origins.push(origin.to_owned());
    }
}

/// An attribute as a tag: scalars as text, arrays and maps as JSON; an attribute without a value or
/// with an empty one is absent.
fn attribute(kv: KeyValue) -> Option<(String, String)> {
    let text = match kv.value.and_then(|v| v.value)? {
        AnyValue::StringValue(s) => s,
        other => json(other).to_string(),
    };
    (!text.is_empty()).then_some((kv.key, text))
}

fn json(value: AnyValue) -> serde_json::Value {
    let inner = |v: Option<AnyValueMessage>| v.and_then(|v| v.value).map_or(serde_json::Value::Null, json);
    match value {
        AnyValue::StringValue(s) => serde_json::Value::String(s),
        AnyValue::BoolValue(b) => serde_json::Value::Bool(b),
        AnyValue::IntValue(i) => serde_json::Value::from(i),
        AnyValue::DoubleValue(d) => serde_json::Value::from(d),
        AnyValue::ArrayValue(a) => a.values.into_iter().map(|v| inner(Some(v))).collect(),
        AnyValue::KvlistValue(kv) => serde_json::Value::Object(kv.values.into_iter().map(|kv| (kv.key, inner(kv.value))).collect()),
        AnyValue::BytesValue(b) => serde_json::Value::String(b.iter().map(|byte| format!("{byte:02x}")).collect()),
        // An index into a profile's string table, which metrics do not have.
        AnyValue::StringValueStrindex(i) => serde_json::Value::from(i),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    const T: u64 = 1_700_000_000_000_000_000;

    fn kv(key: &str, value: AnyValue) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValueMessage { value: Some(value) }), ..Default::default() }
    }

    fn s(text: &str) -> AnyValue {
        AnyValue::StringValue(text.into())
    }

    fn number(attributes: Vec<KeyValue>, value: Number, flags: u32) -> NumberDataPoint {
        NumberDataPoint { attributes, time_unix_nano: T, value: Some(value), flags, ..Default::default() }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric { name: name.into(), data: Some(data), ..Default::default() }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        let resource = Resource {
            attributes: vec![kv("service.name", s("checkout")), kv("process.pid", AnyValue::IntValue(42)), kv("host.name", s("edge-7"))],
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource),
                scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn point(metric: &str, tags: &[(&str, &str)], value: f64) -> Point {
        let mut all: BTreeMap<String, String> = [("host.name", "edge-7"), ("service.name", "checkout")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.extend(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Point { metric: metric.into(), tags: all, timestamp_ns: T as i64, value }
    }

    #[test]
    fn gauges_and_sums_are_points_tagged_with_attributes_and_the_resources_identity() {
        let attrs = vec![kv("route", s("/pay")), kv("ok", AnyValue::BoolValue(true)), kv("codes", AnyValue::ArrayValue(ArrayValue { values: vec![AnyValueMessage { value: Some(AnyValue::IntValue(200)) }] }))];
        let mapped = map(request(vec![
            metric("queue.depth", Data::Gauge(Gauge { data_points: vec![number(attrs, Number::AsInt(7), 0)] })),
            metric("requests", Data::Sum(Sum { data_points: vec![number(vec![], Number::AsDouble(12.5), 0), number(vec![], Number::AsDouble(1.0), 1), number(vec![], Number::AsDouble(f64::NAN), 0)], ..Default::default() })),
        ]))
        .unwrap();
        assert_eq!(mapped.points, vec![point("queue.depth", &[("codes", "[200]"), ("ok", "true"), ("route", "/pay")], 7.0), point("requests", &[], 12.5)]);
        assert_eq!(mapped.origins, vec!["resource_metrics[0].scope_metrics[0].metrics[0]", "resource_metrics[0].scope_metrics[0].metrics[1]"]);
        assert_eq!(mapped.ignored, 2, "the point flagged without a value and the NaN");
    }

    #[test]
    fn a_histogram_becomes_count_sum_min_max_and_cumulative_buckets() {
        let p = HistogramDataPoint {
            time_unix_nano: T,
            count: 10,
            sum: Some(4.5),
            bucket_counts: vec![2, 5, 3],
            explicit_bounds: vec![0.1, 1.0],
            min: Some(0.05),
            max: Some(2.5),
            ..Default::default()
        };
        let mapped = map(request(vec![metric("rpc.duration", Data::Histogram(Histogram { data_points: vec![p], ..Default::default() }))])).unwrap();
        assert_eq!(
            mapped.points,
            vec![
                point("rpc.duration_count", &[], 10.0),
                point("rpc.duration_sum", &[], 4.5),
                point("rpc.duration_min", &[], 0.05),
                point("rpc.duration_max", &[], 2.5),
                point("rpc.duration_bucket", &[("le", "0.1")], 2.0),
                point("rpc.duration_bucket", &[("le", "1")], 7.0),
                point("rpc.duration_bucket", &[("le", "+Inf")], 10.0),
            ]
        );
    }

    #[test]
    fn a_summary_becomes_count_sum_and_quantiles() {
        let p = SummaryDataPoint {
            time_unix_nano: T,
            count: 3,
            sum: 6.0,
            quantile_values: vec![ValueAtQuantile { quantile: 0.5, value: 2.0 }, ValueAtQuantile { quantile: 0.99, value: 3.0 }],
            ..Default::default()
        };
        let mapped = map(request(vec![metric("gc", Data::Summary(Summary { data_points: vec![p] }))])).unwrap();
        assert_eq!(
            mapped.points,
            vec![point("gc_count", &[], 3.0), point("gc_sum", &[], 6.0), point("gc", &[("quantile", "0.5")], 2.0), point("gc", &[("quantile", "0.99")], 3.0)]
        );
    }

    #[test]
    fn a_time_past_i64_is_named_by_its_path() {
        let mut late = number(vec![], Number::AsInt(1), 0);
        late.time_unix_nano = u64::MAX;
        let err = map(request(vec![metric("m", Data::Gauge(Gauge { data_points: vec![late] }))])).unwrap_err();
        assert_eq!(err[0].field, "resource_metrics[0].scope_metrics[0].metrics[0].time_unix_nano");
    }
}
