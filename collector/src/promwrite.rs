//! Prometheus remote write to points: pure functions over a request body, no IO. The body is a
//! snappy-compressed (block format, the `snap` crate) protobuf `prometheus.WriteRequest`.
//!
//! The mapping, documented in the README:
//! - each sample is a point; the metric is the `__name__` label, the other labels are its tags (a label
//!   with an empty value is absent, as in Prometheus);
//! - sample timestamps are milliseconds;
//! - samples that are not finite numbers (Prometheus's staleness markers are NaN) and native histograms
//!   make no point: they are counted and the count is returned.

use std::collections::BTreeMap;

use proto::prometheus::WriteRequest;
use proto::prost::Message as _;
use proto::v1::Point;

use crate::validate::Violation;

const NAME_LABEL: &str = "__name__";
const NANOS_PER_MILLI: i64 = 1_000_000;

/// The points of a request, each with the index of the series it came from.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub points: Vec<Point>,
    /// For each point, the index of its time series in the request.
    pub series: Vec<usize>,
    /// Samples that are not finite numbers, and native histograms.
    pub ignored: usize,
}

/// Why a body is not a remote-write request at all.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The snappy block announces more than `limit` bytes: refused before inflating anything.
    TooLarge { announced: usize, limit: usize },
    NotSnappy(String),
    NotProtobuf(String),
}

/// Inflates and decodes `body`, inflating at most `max_decompressed` bytes; then maps every series,
/// reporting each one that cannot be a series (no `__name__`, a timestamp that does not fit) with its
/// index.
pub fn decode(body: &[u8], max_decompressed: usize) -> Result<Result<Decoded, Vec<Violation>>, BodyError> {
    // The block format starts with the inflated length, so a bomb is refused without inflating it.
    let announced = snap::raw::decompress_len(body).map_err(|err| BodyError::NotSnappy(err.to_string()))?;
    if announced > max_decompressed {
        return Err(BodyError::TooLarge { announced, limit: max_decompressed });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|err| BodyError::NotSnappy(err.to_string()))?;
    let request = WriteRequest::decode(raw.as_slice()).map_err(|err| BodyError::NotProtobuf(err.to_string()))?;
    Ok(map(request))
}

fn map(request: WriteRequest) -> Result<Decoded, Vec<Violation>> {
    let mut decoded = Decoded::default();
    let mut violations = Vec::new();
    for (index, series) in request.timeseries.into_iter().enumerate() {
        let refuse = |field: &str, reason: String| Violation { index: None, line: None, field: format!("timeseries[{index}].{field}"), reason };
        decoded.ignored += series.histograms.len();
        let mut metric = None;
        let mut tags = BTreeMap::new();
        for label in series.labels {
            if label.name == NAME_LABEL {
                metric = Some(label.value);
            } else if !label.value.is_empty() {
                tags.insert(label.name, label.value);
            }
        }
        let Some(metric) = metric.filter(|m| !m.is_empty()) else {
            if !series.samples.is_empty() {
                violations.push(refuse("labels", format!("has no {NAME_LABEL} label")));
            }
            continue;
        };
        for sample in series.samples {
            if !sample.value.is_finite() {
                decoded.ignored += 1;
                continue;
            }
            let Some(timestamp_ns) = sample.timestamp.checked_mul(NANOS_PER_MILLI) else {
                violations.push(refuse("samples", format!("timestamp {} ms does not fit in 64-bit nanoseconds", sample.timestamp)));
                continue;
            };
            decoded.points.push(Point { metric: metric.clone(), tags: tags.clone(), timestamp_ns, value: sample.value });
            decoded.series.push(index);
        }
    }
    if violations.is_empty() { Ok(decoded) } else { Err(violations) }
}

#[cfg(test)]
mod tests {
    use proto::prometheus::{Label, Sample, TimeSeries};

    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: samples.iter().map(|&(value, timestamp)| Sample { value, timestamp }).collect(),
            histograms: Vec::new(),
        }
    }

    fn body(request: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).unwrap()
    }

    fn point(metric: &str, tags: &[(&str, &str)], ms: i64, value: f64) -> Point {
        Point { metric: metric.into(), tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), timestamp_ns: ms * NANOS_PER_MILLI, value }
    }

    /// Prometheus's staleness marker, a NaN with this exact bit pattern.
    const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

    #[test]
    fn each_sample_is_a_point_named_by_its_name_label() {
        let mut histogram = series(&[("__name__", "rpc_seconds"), ("job", "api")], &[]);
        histogram.histograms.push(vec![1, 2, 3]);
        let request = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("instance", "a:9100"), ("job", "node"), ("zone", "")], &[(1.0, 1_000), (0.0, 16_000)]),
                series(&[("__name__", "http_seconds_bucket"), ("le", "+Inf")], &[(7.0, 2_000), (f64::from_bits(STALE_NAN), 3_000)]),
                histogram,
            ],
        };
        let decoded = decode(&body(&request), 1 << 20).unwrap().unwrap();
        assert_eq!(
            decoded.points,
            vec![
                point("up", &[("instance", "a:9100"), ("job", "node")], 1_000, 1.0),
                point("up", &[("instance", "a:9100"), ("job", "node")], 16_000, 0.0),
                point("http_seconds_bucket", &[("le", "+Inf")], 2_000, 7.0),
            ]
        );
        assert_eq!(decoded.series, vec![0, 0, 1]);
        assert_eq!(decoded.ignored, 2, "the staleness marker and the native histogram");
    }

    #[test]
    fn a_series_without_a_name_is_named_by_its_index() {
        let request = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)]), series(&[("job", "x")], &[(1.0, 1)]), series(&[("__name__", "m")], &[(1.0, i64::MAX)])],
        };
        let violations = decode(&body(&request), 1 << 20).unwrap().unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, vec!["timeseries[1].labels", "timeseries[2].samples"]);
    }

    #[test]
    fn a_body_is_refused_on_its_announced_size_before_inflating() {
        let request = WriteRequest { timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)]); 1_000] };
        let compressed = body(&request);
        let inflated = request.encoded_len();
        assert_eq!(decode(&compressed, inflated - 1), Err(BodyError::TooLarge { announced: inflated, limit: inflated - 1 }));
        assert!(decode(&compressed, inflated).unwrap().is_ok());
        assert!(matches!(decode(b"\xff\xff\xff\xff\xff", 1 << 20), Err(BodyError::NotSnappy(_))));
        let not_protobuf = snap::raw::Encoder::new().compress_vec(b"\xff\xff\xff").unwrap();
        assert!(matches!(decode(&not_protobuf, 1 << 20), Err(BodyError::NotProtobuf(_))));
    }
}
