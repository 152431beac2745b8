//! Point validation: pure functions over plain data, no IO. A batch is valid only when every point is;
//! every violation is reported, each naming the point's index and the field.

use std::fmt;

use proto::v1::Point;

use crate::config::Limits;

/// One reason a batch is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The point's index in the batch; none for a rule on the whole batch or a line that made no point.
    pub index: Option<usize>,
    /// The 1-based line of a line-protocol body the point or error came from.
    pub line: Option<usize>,
    /// The point's field (`metric`, `tags["host"]`), or the request's (`points`, `line`); empty when
    /// the whole point is wrong.
    pub field: String,
    pub reason: String,
}

/// The field of the rule on points per batch.
const BATCH_FIELD: &str = "points";

impl Violation {
    fn point(index: usize, field: impl Into<String>, reason: String) -> Self {
        Self { index: Some(index), line: None, field: field.into(), reason }
    }

    /// The field in the gRPC request's terms: `points[3].metric`, `points[3].tags["host"]`, `points`.
    pub fn path(&self) -> String {
        match (self.index, self.field.is_empty()) {
            (Some(index), true) => format!("{BATCH_FIELD}[{index}]"),
            (Some(index), false) => format!("{BATCH_FIELD}[{index}].{}", self.field),
            (None, _) => self.field.clone(),
        }
    }

    /// Whether this is the rule on points per batch, which a client fixes by splitting the batch.
    pub fn is_batch_size(&self) -> bool {
        self.index.is_none() && self.field == BATCH_FIELD
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.path(), self.reason)
    }
}

/// Checks a whole batch against `limits` at wall-clock time `now_ns`; returns every violation.
pub fn validate_batch(points: &[Point], limits: &Limits, now_ns: i64) -> Result<(), Vec<Violation>> {
    if points.len() > limits.max_batch_points {
        return Err(vec![Violation {
            index: None,
            line: None,
            field: BATCH_FIELD.to_owned(),
            reason: format!("batch of {} points exceeds the limit of {}", points.len(), limits.max_batch_points),
        }]);
    }
    let mut violations = Vec::new();
    for (index, point) in points.iter().enumerate() {
        validate_point(index, point, limits, now_ns, &mut violations);
    }
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

fn validate_point(index: usize, point: &Point, limits: &Limits, now_ns: i64, out: &mut Vec<Violation>) {
    let mut refuse = |field: String, reason: String| out.push(Violation::point(index, field, reason));

    if let Err(reason) = check_name(&point.metric, limits.max_metric_len, is_metric_start, is_metric_char, "[A-Za-z_:][A-Za-z0-9_:.-]*") {
        refuse("metric".to_owned(), reason);
    }
    if !point.value.is_finite() {
        refuse("value".to_owned(), format!("{} is not a finite number", point.value));
    }
    if let Err(reason) = check_timestamp(point.timestamp_ns, limits, now_ns) {
        refuse("timestamp_ns".to_owned(), reason);
    }
    if point.tags.len() > limits.max_tags {
        refuse("tags".to_owned(), format!("{} tags exceed the limit of {}", point.tags.len(), limits.max_tags));
    }
    for (name, value) in &point.tags {
        if let Err(reason) = check_name(name, limits.max_tag_name_len, is_tag_start, is_tag_char, "[A-Za-z_][A-Za-z0-9_.-]*") {
            refuse("tags".to_owned(), format!("tag name {name:?}: {reason}"));
        }
        if let Err(reason) = check_tag_value(value, limits.max_tag_value_len) {
            refuse(format!("tags[{name:?}]"), reason);
        }
    }
}

fn is_metric_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-')
}

fn is_tag_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn check_name(
    name: &str,
    max_len: usize,
    start: fn(char) -> bool,
    rest: fn(char) -> bool,
    pattern: &str,
) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("must not be empty".to_owned()),
        Some(first) if !start(first) => return Err(format!("{name:?} must match {pattern}")),
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !rest(*c)) {
        return Err(format!("{name:?} has the character {bad:?}; names must match {pattern}"));
    }
    if name.len() > max_len {
        return Err(format!("{} bytes exceed the limit of {max_len}", name.len()));
    }
    Ok(())
}

fn check_tag_value(value: &str, max_len: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty; leave the tag out instead".to_owned());
    }
    if value.len() > max_len {
        return Err(format!("{} bytes exceed the limit of {max_len}", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(format!("has the control character {bad:?}"));
    }
    Ok(())
}

fn check_timestamp(ts: i64, limits: &Limits, now_ns: i64) -> Result<(), String> {
    let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let oldest = now_ns.saturating_sub(nanos(limits.max_age));
    let newest = now_ns.saturating_add(nanos(limits.max_future));
    if ts < oldest {
        return Err(format!(
            "{ts} is {} in the past, beyond the allowed {}",
            human(now_ns.saturating_sub(ts)),
            humantime::format_duration(limits.max_age)
        ));
    }
    if ts > newest {
        return Err(format!(
            "{ts} is {} in the future, beyond the allowed {}",
            human(ts.saturating_sub(now_ns)),
            humantime::format_duration(limits.max_future)
        ));
    }
    Ok(())
}

/// Whole seconds are enough to tell a user how far off a timestamp is.
fn human(nanos: i64) -> humantime::FormattedDuration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    humantime::format_duration(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn point(metric: &str, tags: &[(&str, &str)], ts: i64, value: f64) -> Point {
        Point {
            metric: metric.to_owned(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            timestamp_ns: ts,
            value,
        }
    }

    fn fields(points: &[Point], limits: &Limits) -> Vec<String> {
        match validate_batch(points, limits, NOW) {
            Ok(()) => Vec::new(),
            Err(v) => v.into_iter().map(|v| v.path()).collect(),
        }
    }

    #[test]
    fn a_good_batch_passes() {
        let limits = Limits::default();
        let batch = vec![
            point("cpu.usage_percent", &[("host", "web-1"), ("dc", "eu west")], NOW, 12.5),
            point("ns:latency", &[], NOW - 3600 * 1_000_000_000, -3.0),
        ];
        assert_eq!(validate_batch(&batch, &limits, NOW), Ok(()));
        assert_eq!(validate_batch(&[], &limits, NOW), Ok(()));
    }

    #[test]
    fn each_rule_names_index_and_field() {
        let limits = Limits { max_tags: 2, max_metric_len: 8, max_tag_value_len: 4, ..Limits::default() };
        let ok = point("m", &[], NOW, 1.0);
        let cases: Vec<(Point, &str)> = vec![
            (point("", &[], NOW, 1.0), "points[1].metric"),
            (point("1abc", &[], NOW, 1.0), "points[1].metric"),
            (point("a b", &[], NOW, 1.0), "points[1].metric"),
            (point("abcdefghi", &[], NOW, 1.0), "points[1].metric"),
            (point("m", &[], NOW, f64::NAN), "points[1].value"),
            (point("m", &[], NOW, f64::INFINITY), "points[1].value"),
            (point("m", &[], NOW - 8 * 24 * 3600 * 1_000_000_000, 1.0), "points[1].timestamp_ns"),
            (point("m", &[], NOW + 6 * 60 * 1_000_000_000, 1.0), "points[1].timestamp_ns"),
            (point("m", &[("a", "1"), ("b", "2"), ("c", "3")], NOW, 1.0), "points[1].tags"),
            (point("m", &[("bad key", "1")], NOW, 1.0), "points[1].tags"),
            (point("m", &[("k", "")], NOW, 1.0), "points[1].tags[\"k\"]"),
            (point("m", &[("k", "12345")], NOW, 1.0), "points[1].tags[\"k\"]"),
            (point("m", &[("k", "a\nb")], NOW, 1.0), "points[1].tags[\"k\"]"),
        ];
        for (bad, field) in cases {
            let got = fields(&[ok.clone(), bad.clone()], &limits);
            assert_eq!(got, vec![field.to_owned()], "for {bad:?}");
        }
    }

    #[test]
    fn every_violation_is_reported() {
        let limits = Limits::default();
        let batch = vec![point("", &[], NOW, f64::NAN), point("ok", &[], NOW, 1.0), point("m", &[("k", "")], 0, 1.0)];
        assert_eq!(
            fields(&batch, &limits),
            vec!["points[0].metric", "points[0].value", "points[2].timestamp_ns", "points[2].tags[\"k\"]"]
        );
    }

    #[test]
    fn timestamp_bounds_are_inclusive() {
        let limits = Limits { max_age: Duration::from_secs(10), max_future: Duration::from_secs(1), ..Limits::default() };
        let edge = [point("m", &[], NOW - 10_000_000_000, 1.0), point("m", &[], NOW + 1_000_000_000, 1.0)];
        assert_eq!(validate_batch(&edge, &limits, NOW), Ok(()));
        let over = [point("m", &[], NOW - 10_000_000_001, 1.0)];
        let err = validate_batch(&over, &limits, NOW).unwrap_err();
        assert_eq!(err[0].reason, format!("{} is 10s in the past, beyond the allowed 10s", NOW - 10_000_000_001));
    }

    #[test]
    fn an_oversized_batch_is_refused_before_its_points_are_read() {
        let limits = Limits { max_batch_points: 2, ..Limits::default() };
        let batch = vec![point("m", &[], NOW, 1.0); 3];
        let err = validate_batch(&batch, &limits, NOW).unwrap_err();
        assert_eq!(
            err,
            vec![Violation { index: None, line: None, field: "points".into(), reason: "batch of 3 points exceeds the limit of 2".into() }]
        );
        assert!(err[0].is_batch_size());
    }
}
