//! `runnel send`: a CSV or NDJSON file to the collector, line by line, in batches acknowledged one by
//! one (`WriteAcked`), with a progress bar; or, with `--follow`, the lines appended to it as they come.
//!
//! `Mapping` turns one row (column name to text) into points, with no IO; `send` does the reading and
//! the sending.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{Point, WriteAck, WriteRequest};

/// How a file's rows become points.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    /// The metric of every point (with several value columns, the prefix of `<metric>_<column>`).
    pub(crate) metric: Option<String>,
    /// The column naming each row's metric instead.
    pub(crate) metric_column: Option<String>,
    pub(crate) time_column: String,
    pub(crate) time_unit: TimeUnit,
    pub(crate) tag_columns: Vec<String>,
    /// Tags every point gets.
    pub(crate) tags: BTreeMap<String, String>,
    /// Columns holding values; empty means every column that is not the time, the metric or a tag.
    pub(crate) value_columns: Vec<String>,
}

/// The unit of a numeric time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TimeUnit {
    S,
    Ms,
    Us,
    Ns,
}

/// The format of a file: by default from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Csv,
    Ndjson,
}

impl Mapping {
    /// The points of one row; an empty value cell makes no point. The error names the column.
    pub(crate) fn points(&self, row: &BTreeMap<String, String>) -> Result<Vec<Point>, String> {
        let cell = |column: &str| row.get(column).map(String::as_str).filter(|v| !v.is_empty());
        let time = cell(&self.time_column).ok_or_else(|| format!("column {:?}: no time", self.time_column))?;
        let timestamp_ns = self.time_ns(time).map_err(|reason| format!("column {:?}: {reason}", self.time_column))?;
        let row_metric = match &self.metric_column {
            Some(column) => Some(cell(column).ok_or_else(|| format!("column {column:?}: no metric"))?.to_owned()),
            None => self.metric.clone(),
        };
        let mut tags = self.tags.clone();
        for column in &self.tag_columns {
            if let Some(value) = cell(column) {
                tags.insert(column.clone(), value.to_owned());
            }
        }
        let is_value = |column: &str| {
            if self.value_columns.is_empty() {
                column != self.time_column && Some(column) != self.metric_column.as_deref() && !self.tag_columns.iter().any(|t| t == column)
            } else {
                self.value_columns.iter().any(|v| v == column)
            }
        };
        let values: Vec<&String> = row.keys().filter(|c| is_value(c)).collect();
        let mut points = Vec::new();
        for column in &values {
            let Some(text) = cell(column) else { continue };
            let value: f64 = text.trim().parse().map_err(|_| format!("column {column:?}: {text:?} is not a number"))?;
            let metric = match (&row_metric, values.len()) {
                (Some(metric), 1) => metric.clone(),
                (Some(metric), _) => format!("{metric}_{column}"),
                (None, _) => (*column).clone(),
            };
            points.push(Point { metric, tags: tags.clone(), timestamp_ns, value });
        }
        Ok(points)
    }

    /// RFC 3339 text, or a number in the time unit (seconds may have a fraction).
    fn time_ns(&self, text: &str) -> Result<i64, String> {
        let text = text.trim();
        if let Ok(at) = humantime::parse_rfc3339_weak(text) {
            let since = at.duration_since(UNIX_EPOCH).map_err(|_| format!("{text:?} is before 1970"))?;
            return i64::try_from(since.as_nanos()).map_err(|_| format!("{text:?} is too far ahead"));
        }
        let scale = match self.time_unit {
            TimeUnit::S => 1e9,
            TimeUnit::Ms => 1e6,
            TimeUnit::Us => 1e3,
            TimeUnit::Ns => 1.0,
        };
        if let Ok(whole) = text.parse::<i64>() {
            #[allow(clippy::cast_possible_truncation)]
            return whole.checked_mul(scale as i64).ok_or_else(|| format!("{text:?} does not fit in 64-bit nanoseconds"));
        }
        match text.parse::<f64>() {
            #[allow(clippy::cast_possible_truncation)] // bounded just above
            Ok(n) if (n * scale).is_finite() && (n * scale).abs() < 9.2e18 => Ok((n * scale).round() as i64),
            _ => Err(format!("{text:?} is neither RFC 3339 nor a number of {:?}", self.time_unit)),
        }
    }
}

/// One line of the file as named cells: CSV against the header, NDJSON as an object (numbers and
/// booleans as their text).
fn row(format: Format, header: &[String], line: &str) -> Result<BTreeMap<String, String>, String> {
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
            let record = reader.records().next().unwrap_or_else(|| Ok(csv::StringRecord::new())).map_err(|e| e.to_string())?;
            if record.len() != header.len() {
                return Err(format!("{} cells, but the header names {} columns", record.len(), header.len()));
            }
            Ok(header.iter().cloned().zip(record.iter().map(str::to_owned)).collect())
        }
        Format::Ndjson => {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).map_err(|e| e.to_string())?;
            Ok(object
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k, text)
                })
                .collect())
        }
    }
}

/// What a send did.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) lines: u64,
    pub(crate) points: u64,
}

/// A batch in flight: its points' line numbers, to name the line of a refused point.
type Pending = VecDeque<Vec<u64>>;

/// Sends `file`; returns when every batch was acknowledged (or, following, after an interrupt). A line
/// that cannot be read or a batch the collector refused stops the send with the line's number; what
/// was acknowledged before stays written.
pub(crate) async fn send(url: crate::connect::Service<'_>, file: &Path, format: Option<Format>, mapping: &Mapping, batch: usize, follow: bool) -> anyhow::Result<Sent> {
    let format = match format {
        Some(format) => format,
        None => match file.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("ndjson" | "jsonl") => Format::Ndjson,
            _ => bail!("cannot tell the format of {} from its extension; pass --format csv or ndjson", file.display()),
        },
    };
    let opened = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let total = opened.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::new(opened);
    let mut client = url.collector().await?;

    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (batches, outgoing) = tokio::sync::mpsc::channel::<WriteRequest>(8);
    let mut acks = client.write_acked(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await?.into_inner();
    let mut pending = Pending::new();
    let mut sent = Sent::default();
    let mut header: Option<Vec<String>> = if format == Format::Csv { None } else { Some(Vec::new()) };
    let (mut points, mut lines): (Vec<Point>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut text = String::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        text.clear();
        let read = reader.read_line(&mut text).with_context(|| format!("reading {}", file.display()))?;
        let at_end = read == 0 || !text.ends_with('\n');
        if read > 0 && !(at_end && follow) {
            sent.lines += 1;
            progress.inc(read as u64);
            let line = text.trim_end_matches(['\n', '\r']);
            match &header {
                None => {
                    let names = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes()).records().next();
                    let names = names.transpose().map_err(|e| anyhow::anyhow!("line 1 (the header): {e}"))?.unwrap_or_default();
                    header = Some(names.iter().map(|c| c.trim().to_owned()).collect());
                }
                Some(_) if line.trim().is_empty() => {}
                Some(names) => {
                    let cells = row(format, names, line).map_err(|reason| anyhow::anyhow!("line {}: {reason}", sent.lines))?;
                    let row_points = mapping.points(&cells).map_err(|reason| anyhow::anyhow!("line {}: {reason}", sent.lines))?;
                    lines.extend(std::iter::repeat_n(sent.lines, row_points.len()));
                    points.extend(row_points);
                }
            }
        } else if read > 0 {
            // A partial last line while following: read it again once it is whole.
            reader.seek_relative(-(read as i64))?;
        }
        let flush = points.len() >= batch || (at_end && !points.is_empty());
        if flush {
            pending.push_back(std::mem::take(&mut lines));
            let request = WriteRequest { points: std::mem::take(&mut points) };
            // Room in the channel waits for acknowledgements, which must be read meanwhile.
            let mut request = Some(request);
            while let Some(r) = request.take() {
                tokio::select! {
                    permit = batches.reserve() => permit?.send(r),
                    ack = acks.next() => {
                        request = Some(r);
                        take_ack(ack, &mut pending, &mut sent, &progress)?;
                    }
                }
            }
        }
        if at_end {
            if !follow {
                break;
            }
            // Following: wait for more, answering acknowledgements meanwhile, until interrupted.
            tokio::select! {
                _ = &mut interrupted => break,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                ack = acks.next(), if !pending.is_empty() => take_ack(ack, &mut pending, &mut sent, &progress)?,
            }
        }
    }
    drop(batches);
    while !pending.is_empty() {
        take_ack(acks.next().await, &mut pending, &mut sent, &progress)?;
    }
    progress.finish_and_clear();
    Ok(sent)
}

/// Counts an acknowledged batch, or fails naming the lines of a refused one's points.
fn take_ack(ack: Option<Result<WriteAck, proto::tonic::Status>>, pending: &mut Pending, sent: &mut Sent, progress: &ProgressBar) -> anyhow::Result<()> {
    let ack = ack.context("the collector ended the stream early")??;
    let lines = pending.pop_front().unwrap_or_default();
    if ack.code != 0 {
        let mut why = format!("the collector refused the batch of lines {}..={}: {}", lines.first().unwrap_or(&0), lines.last().unwrap_or(&0), ack.message);
        for v in &ack.violations {
            let line = point_index(&v.field).and_then(|i| lines.get(i));
            match line {
                Some(line) => why.push_str(&format!("\n  line {line}: {}: {}", v.field, v.description)),
                None => why.push_str(&format!("\n  {}: {}", v.field, v.description)),
            }
        }
        bail!("{why}\n{} points of earlier batches were acknowledged", sent.points);
    }
    sent.points += ack.accepted;
    progress.set_message(format!("{} points acknowledged", sent.points));
    Ok(())
}

/// The index `3` of `points[3].metric`.
fn point_index(field: &str) -> Option<usize> {
    field.strip_prefix("points[")?.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(secs: i64) -> i64 {
        secs * 1_000_000_000
    }

    fn mapping() -> Mapping {
        Mapping {
            metric: None,
            metric_column: None,
            time_column: "timestamp".into(),
            time_unit: TimeUnit::S,
            tag_columns: vec!["sensor".into()],
            tags: BTreeMap::from([("site".into(), "lab".into())]),
            value_columns: Vec::new(),
        }
    }

    fn cells(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn point(metric: &str, sensor: &str, ts: i64, value: f64) -> Point {
        Point { metric: metric.into(), tags: BTreeMap::from([("sensor".into(), sensor.into()), ("site".into(), "lab".into())]), timestamp_ns: ts, value }
    }

    #[test]
    fn each_value_column_is_a_metric_and_tag_columns_are_tags() {
        let row = cells(&[("timestamp", "1700000000"), ("sensor", "s1"), ("temperature", "21.5"), ("humidity", "")]);
        assert_eq!(mapping().points(&row), Ok(vec![point("temperature", "s1", epoch(1_700_000_000), 21.5)]));
        let prefixed = Mapping { metric: Some("env".into()), ..mapping() };
        let row = cells(&[("timestamp", "2023-11-14T22:13:20Z"), ("sensor", "s1"), ("temperature", "21.5"), ("humidity", "40")]);
        assert_eq!(
            prefixed.points(&row),
            Ok(vec![point("env_humidity", "s1", epoch(1_700_000_000), 40.0), point("env_temperature", "s1", epoch(1_700_000_000), 21.5)])
        );
        let single = Mapping { metric: Some("temp".into()), value_columns: vec!["temperature".into()], ..mapping() };
        assert_eq!(single.points(&row), Ok(vec![point("temp", "s1", epoch(1_700_000_000), 21.5)]));
    }

    #[test]
    fn time_units_and_errors_name_the_column() {
        let ms = Mapping { time_unit: TimeUnit::Ms, ..mapping() };
        let row = cells(&[("timestamp", "1700000000123"), ("sensor", "s1"), ("v", "1")]);
        assert_eq!(ms.points(&row).unwrap()[0].timestamp_ns, 1_700_000_000_123_000_000);
        let row = cells(&[("timestamp", "1700000000.5"), ("sensor", "s1"), ("v", "1")]);
        assert_eq!(mapping().points(&row).unwrap()[0].timestamp_ns, 1_700_000_000_500_000_000);
        let row = cells(&[("timestamp", "yesterday"), ("v", "1")]);
        assert_eq!(mapping().points(&row), Err("column \"timestamp\": \"yesterday\" is neither RFC 3339 nor a number of S".into()));
        let row = cells(&[("timestamp", "1"), ("v", "warm")]);
        assert_eq!(mapping().points(&row), Err("column \"v\": \"warm\" is not a number".into()));
    }

    #[test]
    fn csv_and_ndjson_rows_name_their_cells() {
        let header = vec!["timestamp".to_owned(), "sensor".to_owned(), "v".to_owned()];
        assert_eq!(row(Format::Csv, &header, "1,\"s,1\",2.5"), Ok(cells(&[("timestamp", "1"), ("sensor", "s,1"), ("v", "2.5")])));
        assert_eq!(row(Format::Csv, &header, "1,s1"), Err("2 cells, but the header names 3 columns".into()));
        assert_eq!(row(Format::Ndjson, &[], r#"{"timestamp":1,"sensor":"s1","v":2.5,"ok":true}"#), Ok(cells(&[("timestamp", "1"), ("sensor", "s1"), ("v", "2.5"), ("ok", "true")])));
        assert_eq!(point_index("points[12].tags[\"k\"]"), Some(12));
    }
}
