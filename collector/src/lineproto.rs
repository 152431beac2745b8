//! InfluxDB line protocol to points: pure functions over a request body, no IO. Parsing is the
//! `influxdb-line-protocol` crate's (InfluxDB IOx's parser, compatible with the Go one); this module
//! maps its lines to Runnel's series and reports each refusal with its line number.
//!
//! The mapping, documented in the README:
//! - one point per numeric field; the metric is the measurement for a field called `value`, otherwise
//!   `<measurement>_<field>` (what Telegraf's Prometheus output does), and the tags are the line's;
//! - integers and unsigned integers become floats (exact up to 2^53), booleans 1 and 0;
//! - string fields are not numbers and make no point; they are counted and the count is returned;
//! - a line without a timestamp takes the collector's clock; the `precision` scales the others.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use influxdb_line_protocol::FieldValue;
use proto::v1::Point;

use crate::validate::Violation;

/// The unit of a request's timestamps, InfluxDB's `precision` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    fn nanos(self) -> i64 {
        match self {
            Self::Nanoseconds => 1,
            Self::Microseconds => 1_000,
            Self::Milliseconds => 1_000_000,
            Self::Seconds => 1_000_000_000,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ns" | "n" => Ok(Self::Nanoseconds),
            "us" | "u" => Ok(Self::Microseconds),
            "ms" => Ok(Self::Milliseconds),
            "s" => Ok(Self::Seconds),
            other => Err(format!("precision {other:?} is not one of ns, us, ms, s")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nanoseconds => "ns",
            Self::Microseconds => "us",
            Self::Milliseconds => "ms",
            Self::Seconds => "s",
        })
    }
}

/// The points of a body, each with the line it came from.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub points: Vec<Point>,
    /// For each point, the 1-based line of the body it came from.
    pub lines: Vec<usize>,
    /// String fields, which make no point.
    pub ignored_fields: usize,
    /// Each line that made no point because it is not line protocol (or its timestamp does not fit),
    /// with its text and why.
    pub refused: Vec<(String, Violation)>,
}

/// Parses a whole body; a line that is not line protocol is a violation naming its line, and every
/// such line is reported. Points are numbered in body order, several per line when it has several
/// numeric fields.
pub fn parse(body: &str, precision: Precision, now_ns: i64) -> Result<Parsed, Vec<Violation>> {
    let parsed = parse_lenient(body, precision, now_ns);
    if parsed.refused.is_empty() { Ok(parsed) } else { Err(parsed.refused.into_iter().map(|(_, v)| v).collect()) }
}

/// Parses every line that is line protocol and keeps the others, with their text, in `refused`.
pub fn parse_lenient(body: &str, precision: Precision, now_ns: i64) -> Parsed {
    let mut parsed = Parsed::default();
    let mut lines = LineNumbers::new(body);
    for raw in influxdb_line_protocol::split_lines(body) {
        let line = lines.of(raw);
        // Windows line endings: the `\r` would otherwise be trailing content of the line.
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        // One raw line parses to nothing (blank, a comment) or one line.
        let Some(result) = influxdb_line_protocol::parse_lines(raw).next() else { continue };
        let refuse = |field: &str, reason: String| Violation { index: None, line: Some(line), field: field.to_owned(), reason };
        let line_protocol = match result {
            Ok(ok) => ok,
            Err(err) => {
                parsed.refused.push((raw.to_owned(), refuse("line", err.to_string())));
                continue;
            }
        };
        let timestamp_ns = match line_protocol.timestamp {
            None => now_ns,
            Some(ts) => match ts.checked_mul(precision.nanos()) {
                Some(ns) => ns,
                None => {
                    parsed.refused.push((raw.to_owned(), refuse("timestamp", format!("{ts} in {precision} does not fit in 64-bit nanoseconds"))));
                    continue;
                }
            },
        };
        let measurement = line_protocol.series.measurement.as_str();
        let tags: BTreeMap<String, String> = line_protocol
            .series
            .tag_set
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
            .collect();
        let numbers = line_protocol.field_set.iter().filter_map(|(key, value)| {
            #[allow(clippy::cast_precision_loss)] // documented: integers are exact up to 2^53
            let value = match value {
                FieldValue::F64(v) => *v,
                FieldValue::I64(v) => *v as f64,
                FieldValue::U64(v) => *v as f64,
                FieldValue::Boolean(v) => f64::from(u8::from(*v)),
                FieldValue::String(_) => return None,
            };
            Some((key.as_str(), value))
        });
        let numbers: Vec<(&str, f64)> = numbers.collect();
        parsed.ignored_fields += line_protocol.field_set.len() - numbers.len();
        // The line's tags go to its last point as they are and are copied for the others.
        let mut tags = Some(tags);
        for (i, &(key, value)) in numbers.iter().enumerate() {
            let metric = if key == "value" { measurement.to_owned() } else { format!("{measurement}_{key}") };
            let tags = if i + 1 == numbers.len() { tags.take().unwrap_or_default() } else { tags.clone().unwrap_or_default() };
            parsed.points.push(Point { metric, tags, timestamp_ns, value });
            parsed.lines.push(line);
        }
    }
    parsed
}

/// Line numbers of slices of one body, asked in body order: each newline is counted once, so a body
/// costs one pass, not one pass per line.
struct LineNumbers<'a> {
    body: &'a str,
    counted_to: usize,
    line: usize,
}

impl<'a> LineNumbers<'a> {
    fn new(body: &'a str) -> Self {
        Self { body, counted_to: 0, line: 1 }
    }

    /// The 1-based line where `part`, a slice of the body at or after the last one asked, starts.
    fn of(&mut self, part: &str) -> usize {
        let start = (part.as_ptr() as usize).saturating_sub(self.body.as_ptr() as usize).clamp(self.counted_to, self.body.len());
        self.line += self.body.as_bytes()[self.counted_to..start].iter().filter(|b| **b == b'\n').count();
        self.counted_to = start;
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn point(metric: &str, tags: &[(&str, &str)], ts: i64, value: f64) -> Point {
        Point { metric: metric.into(), tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), timestamp_ns: ts, value }
    }

    #[test]
    fn each_numeric_field_is_a_point_named_after_measurement_and_field() {
        let body = "cpu,host=a,cpu=cpu0 usage_user=1.5,usage_idle=98i,value=3u,up=true,note=\"x\" 1700000000000000000\n";
        let parsed = parse(body, Precision::Nanoseconds, NOW).unwrap();
        let tags = [("cpu", "cpu0"), ("host", "a")];
        assert_eq!(
            parsed.points,
            vec![
                point("cpu_usage_user", &tags, NOW, 1.5),
                point("cpu_usage_idle", &tags, NOW, 98.0),
                point("cpu", &tags, NOW, 3.0),
                point("cpu_up", &tags, NOW, 1.0),
            ]
        );
        assert_eq!(parsed.lines, vec![1, 1, 1, 1]);
        assert_eq!(parsed.ignored_fields, 1);
    }

    #[test]
    fn precision_scales_and_a_missing_timestamp_takes_the_clock() {
        let body = "m value=1 1700000000\nm value=2\n";
        let parsed = parse(body, Precision::Seconds, NOW).unwrap();
        assert_eq!(parsed.points, vec![point("m", &[], 1_700_000_000 * 1_000_000_000, 1.0), point("m", &[], NOW, 2.0)]);
        for (precision, ts, ns) in [
            (Precision::Milliseconds, 1_700_000_000_123_i64, 1_700_000_000_123_000_000_i64),
            (Precision::Microseconds, 1_700_000_000_123_456, 1_700_000_000_123_456_000),
            (Precision::Nanoseconds, 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ] {
            let parsed = parse(&format!("m value=1 {ts}"), precision, NOW).unwrap();
            assert_eq!(parsed.points[0].timestamp_ns, ns, "{precision}");
        }
        let err = parse("m value=1 9223372036854775807", Precision::Seconds, NOW).unwrap_err();
        assert_eq!((err[0].line, err[0].field.as_str()), (Some(1), "timestamp"));
    }

    #[test]
    fn escapes_comments_and_blank_lines_follow_the_go_parser() {
        let body = "# a comment\n\n  disk\\ io,path=/var\\ log value=2 5\r\nweather,city=K\\,ln temp=-1.5e1 6\n";
        let parsed = parse(body, Precision::Nanoseconds, NOW).unwrap();
        assert_eq!(parsed.points, vec![point("disk io", &[("path", "/var log")], 5, 2.0), point("weather_temp", &[("city", "K,ln")], 6, -15.0)]);
        assert_eq!(parsed.lines, vec![3, 4]);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let body = "good value=1 1\nno_fields 2\ngood value=1 3\nbad value=1i2 4\nbad,tag value=1 5\n";
        let err = parse(body, Precision::Nanoseconds, NOW).unwrap_err();
        let lines: Vec<Option<usize>> = err.iter().map(|v| v.line).collect();
        assert_eq!(lines, vec![Some(2), Some(4), Some(5)]);
        assert!(err.iter().all(|v| v.field == "line" && v.index.is_none()), "{err:?}");
    }

    #[test]
    fn a_quoted_newline_does_not_start_a_line() {
        let body = "m note=\"two\nlines\",value=1 1\nm value=2 2\n";
        let parsed = parse(body, Precision::Nanoseconds, NOW).unwrap();
        assert_eq!(parsed.lines, vec![1, 3]);
        assert_eq!(parsed.ignored_fields, 1);
    }

    #[test]
    fn precision_names_are_influxdbs() {
        for (name, precision) in [("ns", Precision::Nanoseconds), ("us", Precision::Microseconds), ("ms", Precision::Milliseconds), ("s", Precision::Seconds)] {
            assert_eq!(name.parse::<Precision>(), Ok(precision));
            assert_eq!(precision.to_string(), name);
        }
        assert_eq!("h".parse::<Precision>(), Err("precision \"h\" is not one of ns, us, ms, s".to_owned()));
    }
}
