//! `runnel top`: a live view of the pipeline from every service's `/metrics`: per service whether it is
//! ready, its rates (points, windows, rows, records per second between two scrapes), its CPU and
//! memory; per partition the consumer lag and the processor's watermark delay.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One scrape of one service: every sample by its series (`name{labels}`, as written), and `/readyz`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    pub(crate) samples: BTreeMap<String, f64>,
    pub(crate) ready: bool,
}

impl Scrape {
    /// The sum of every sample of `name` whose labels include each of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Each sample of `name` with the value of its label `label`.
    fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter_map(|(series, value)| {
                let rest = series.strip_prefix(name)?.strip_prefix('{')?;
                Some((label_value(rest, label)?, *value))
            })
            .collect()
    }
}

/// The value of `label` in a label set written `a="x",b="y"}`.
fn label_value(labels: &str, label: &str) -> Option<String> {
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_owned())
}

/// Parses Prometheus or OpenMetrics text into samples.
pub(crate) fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// GET `path` of `addr` over plain HTTP/1.0: the status and body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer within 5 s")??;
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).context("not an HTTP answer")?;
    let body = reply.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

pub(crate) async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let (status, text) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let ready = get(addr, "/readyz").await.is_ok_and(|(status, _)| status == 200);
    Ok(Scrape { samples: parse(&text), ready })
}

/// What `top` shows of one service between two scrapes.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) service: String,
    pub(crate) address: String,
    pub(crate) ready: Option<bool>,
    /// CPU cores busy between the scrapes.
    pub(crate) cpu: Option<f64>,
    pub(crate) resident_bytes: Option<f64>,
    /// Named rates per second, in display order.
    pub(crate) rates: Vec<(String, f64)>,
    /// Named values now.
    pub(crate) gauges: Vec<(String, f64)>,
    /// Per (topic, partition): consumer lag in messages.
    pub(crate) lag: Vec<(String, String, f64)>,
    /// Per partition: the processor's watermark delay in seconds.
    pub(crate) watermark_delay_seconds: Vec<(String, f64)>,
    pub(crate) error: Option<String>,
}

/// The rates and values of `service` from two scrapes `seconds` apart.
pub(crate) fn row(service: &str, address: SocketAddr, before: &Scrape, after: &Scrape, seconds: f64) -> Row {
    let rate = |name: &str, labels: &[(&str, &str)]| (after.sum(name, labels) - before.sum(name, labels)).max(0.0) / seconds;
    let (rates, gauges): (Vec<(&str, f64)>, Vec<(&str, f64)>) = match service {
        "collector" => (
            vec![
                ("points/s", rate("runnel_collector_points_total", &[("outcome", "accepted")])),
                ("refused/s", rate("runnel_collector_points_total", &[("outcome", "refused")])),
            ],
            vec![("in flight", after.sum("runnel_collector_in_flight_points", &[]))],
        ),
        "processor" => (
            vec![
                ("points/s", rate("runnel_processor_points_total", &[])),
                ("windows/s", rate("runnel_processor_windows_emitted_total", &[])),
                ("late/s", rate("runnel_processor_late_points_total", &[])),
            ],
            vec![("partitions", after.sum("runnel_processor_assigned_partitions", &[]))],
        ),
        "store" => (
            vec![
                ("points/s", rate("runnel_store_rows_total", &[("kind", "points")])),
                ("windows/s", rate("runnel_store_rows_total", &[("kind", "aggregates")])),
                ("alerts/s", rate("runnel_store_rows_total", &[("kind", "alerts")])),
            ],
            Vec::new(),
        ),
        "analyzer" => (
            vec![("records/s", rate("runnel_analyzer_records_read_total", &[]))],
            vec![("firing", after.sum("runnel_analyzer_alerts", &[("state", "firing")]))],
        ),
        _ => (Vec::new(), Vec::new()),
    };
    let mut lag: Vec<(String, String, f64)> = after
        .samples
        .iter()
        .filter_map(|(series, value)| {
            let labels = series.strip_prefix("runnel_kafka_consumer_lag_messages{")?;
            Some((label_value(labels, "topic")?, label_value(labels, "partition")?, *value))
        })
        .collect();
    lag.sort_by(|a, b| (&a.0, a.1.parse::<i64>().ok()).cmp(&(&b.0, b.1.parse::<i64>().ok())));
    let mut delays = after.by_label("runnel_processor_watermark_delay_seconds", "partition");
    delays.sort_by_key(|(partition, _)| partition.parse::<i64>().ok());
    let cpu = after.samples.get("process_cpu_seconds_total").zip(before.samples.get("process_cpu_seconds_total")).map(|(a, b)| (a - b) / seconds);
    Row {
        service: service.to_owned(),
        address: address.to_string(),
        ready: Some(after.ready),
        cpu,
        resident_bytes: after.samples.get("process_resident_memory_bytes").copied(),
        rates: rates.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
        gauges: gauges.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
        lag,
        watermark_delay_seconds: delays,
        error: None,
    }
}

/// The rows as a person reads them: one line per service, then the partitions that lag.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = format!("{:<10} {:<21} {:<6} {:>5} {:>9}  {}\n", "SERVICE", "ADDRESS", "READY", "CPU", "MEMORY", "ACTIVITY");
    for row in rows {
        if let Some(error) = &row.error {
            out.push_str(&format!("{:<10} {:<21} {error}\n", row.service, row.address));
            continue;
        }
        let ready = match row.ready {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "?",
        };
        let cpu = row.cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
        let memory = row.resident_bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.0} MiB", b / f64::from(1 << 20)));
        let activity: Vec<String> = row
            .rates
            .iter()
            .map(|(name, value)| format!("{} {name}", human(*value)))
            .chain(row.gauges.iter().map(|(name, value)| format!("{} {name}", human(*value))))
            .collect();
        out.push_str(&format!("{:<10} {:<21} {ready:<6} {cpu:>5} {memory:>9}  {}\n", row.service, row.address, activity.join(", ")));
    }
    let lagging: Vec<String> = rows
        .iter()
        .flat_map(|row| {
            let delays: BTreeMap<&str, f64> = row.watermark_delay_seconds.iter().map(|(p, d)| (p.as_str(), *d)).collect();
            row.lag.iter().map(move |(topic, partition, lag)| {
                let delay = delays.get(partition.as_str()).map_or_else(String::new, |d| format!("{d:>10.1} s"));
                format!("{:<10} {topic:<32} {partition:>9} {:>10} {delay}", row.service, human(*lag))
            })
        })
        .collect();
    if !lagging.is_empty() {
        out.push_str(&format!("\n{:<10} {:<32} {:>9} {:>10} {:>12}\n", "SERVICE", "TOPIC", "PARTITION", "LAG", "WATERMARK"));
        for line in lagging {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A number as a person reads it: `950`, `12.3k`, `4.56M`.
fn human(value: f64) -> String {
    match value.abs() {
        v if v >= 1e6 => format!("{:.2}M", value / 1e6),
        v if v >= 1e4 => format!("{:.1}k", value / 1e3),
        v if v >= 100.0 || v == 0.0 || value.fract() == 0.0 => format!("{value:.0}"),
        _ => format!("{value:.1}"),
    }
}

/// Scrapes every service twice, `interval` apart, and returns a row for each (an error row for one
/// that did not answer).
pub(crate) async fn sample(services: &[(String, SocketAddr)], interval: Duration) -> Vec<Row> {
    let scrape_all = || futures::future::join_all(services.iter().map(|(_, addr)| scrape(*addr)));
    let before = scrape_all().await;
    let started = Instant::now();
    tokio::time::sleep(interval).await;
    let after = scrape_all().await;
    let seconds = started.elapsed().as_secs_f64();
    services
        .iter()
        .zip(before.into_iter().zip(after))
        .map(|((name, addr), scrapes)| match scrapes {
            (Ok(before), Ok(after)) => row(name, *addr, &before, &after, seconds),
            (Err(err), _) | (_, Err(err)) => Row {
                service: name.clone(),
                address: addr.to_string(),
                ready: None,
                cpu: None,
                resident_bytes: None,
                rates: Vec::new(),
                gauges: Vec::new(),
                lag: Vec::new(),
                watermark_delay_seconds: Vec::new(),
                error: Some(format!("unreachable: {err:#}")),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE runnel_processor_points counter\nrunnel_processor_points_total 100\nprocess_cpu_seconds_total 1.0\n\
runnel_kafka_consumer_lag_messages{client=\"runnel-processor\",type=\"consumer\",topic=\"points\",partition=\"1\"} 7\n";
    const AFTER: &str = "runnel_processor_points_total 2100\nprocess_cpu_seconds_total 2.0\nprocess_resident_memory_bytes 104857600\n\
runnel_processor_windows_emitted_total 40\nrunnel_processor_assigned_partitions 2\n\
runnel_kafka_consumer_lag_messages{client=\"runnel-processor\",type=\"consumer\",topic=\"points\",partition=\"1\"} 12\n\
runnel_kafka_consumer_lag_messages{client=\"runnel-processor\",type=\"consumer\",topic=\"points\",partition=\"0\"} 0\n\
runnel_processor_watermark_delay_seconds{partition=\"0\"} 4.3\nrunnel_processor_watermark_delay_seconds{partition=\"1\"} 61\n# EOF\n";

    #[test]
    fn rates_come_from_two_scrapes_and_partitions_are_listed_in_order() {
        let before = Scrape { samples: parse(BEFORE), ready: true };
        let after = Scrape { samples: parse(AFTER), ready: true };
        let row = row("processor", "127.0.0.1:9465".parse().unwrap(), &before, &after, 2.0);
        assert_eq!(row.rates[0], ("points/s".to_owned(), 1000.0));
        assert_eq!(row.rates[1], ("windows/s".to_owned(), 20.0));
        assert_eq!(row.cpu, Some(0.5));
        let text = render(&[row]);
        let want = "\
SERVICE    ADDRESS               READY    CPU    MEMORY  ACTIVITY
processor  127.0.0.1:9465        yes     0.50   100 MiB  1000 points/s, 20 windows/s, 0 late/s, 2 partitions

SERVICE    TOPIC                            PARTITION        LAG    WATERMARK
processor  points                                   0          0        4.3 s
processor  points                                   1         12       61.0 s
";
        assert_eq!(text, want);
    }
}
