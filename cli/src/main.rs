//! `runnel`: a command line for people. Writes demo load to the collector, sends CSV or NDJSON files,
//! reads windows and runs SQL on the store, asks the analyzer for forecasts, watches alerts, backtests
//! and tests alert rules, replays dead letters, and shows the pipeline live (`top`). Text for people
//! by default, `--json` for scripts; the exit code says what kind of failure it was (see [`exit_code`]).

mod connect;
mod send;
mod top;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, Parser, Subcommand};
use futures::StreamExt as _;
use proto::v1::dead_letter::Reason;
use proto::v1::tag_matcher::Op;
use proto::v1::{
    AlertState, ForecastModel, ForecastRequest, ListAlertsRequest, ListSeriesRequest, Point, RangeRequest, Series, SeriesSelector, TagMatcher,
    WatchAlertsRequest, WriteRequest,
};

#[derive(Debug, Parser)]
#[command(name = "runnel", version, about = "Talk to a running Runnel pipeline", after_help = EXIT_CODES)]
struct Cli {
    /// Print JSON for scripts (one document; one per line for `watch`) instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    /// The collector's gRPC address.
    #[arg(long, env = "RUNNEL_COLLECTOR_URL", default_value = "http://127.0.0.1:50051", global = true)]
    collector: String,
    /// The store's gRPC address.
    #[arg(long, env = "RUNNEL_STORE_URL", default_value = "http://127.0.0.1:50052", global = true)]
    store: String,
    /// The analyzer's gRPC address.
    #[arg(long, env = "RUNNEL_ANALYZER_URL", default_value = "http://127.0.0.1:50053", global = true)]
    analyzer: String,
    #[command(flatten)]
    access: connect::Access,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write demo load: `demo_temperature{host=...}` rising slowly with a daily-looking wave, one point
    /// per second per host over the recent past.
    Demo {
        /// How many hosts (series).
        #[arg(long, default_value_t = 4)]
        hosts: usize,
        /// How far back the points reach.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        span: Duration,
    },
    /// Send a CSV or NDJSON file of points to the collector, in batches it acknowledges one by one, with
    /// a progress bar; `--follow` keeps sending the lines appended to it, like `tail -f`.
    ///
    /// Each row gives one point per value column, at the row's time, tagged with its tag columns. With
    /// no `--metric`, a value column's name is the metric; with one, it is the metric of a single value
    /// column or the prefix of `<metric>_<column>`.
    ///
    /// Examples:
    ///   runnel send data.csv --tag-columns sensor
    ///   runnel send readings.csv --metric env --time-unit ms --tag site=lab
    ///   runnel send events.ndjson --metric-column name --value-columns value --follow
    Send {
        file: PathBuf,
        /// csv or ndjson; by default from the file's extension.
        #[arg(long, value_enum)]
        format: Option<send::Format>,
        /// The metric of every point, or the prefix `<metric>_<column>` with several value columns.
        #[arg(long)]
        metric: Option<String>,
        /// The column that names each row's metric.
        #[arg(long, conflicts_with = "metric")]
        metric_column: Option<String>,
        /// The column of the event time: RFC 3339, or a number in `--time-unit`.
        #[arg(long, default_value = "timestamp")]
        time_column: String,
        /// The unit of a numeric time.
        #[arg(long, value_enum, default_value = "s")]
        time_unit: send::TimeUnit,
        /// Columns whose values are tags (comma-separated).
        #[arg(long, value_delimiter = ',')]
        tag_columns: Vec<String>,
        /// A tag every point gets, `name=value`; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Columns holding values (comma-separated); by default every column that is not the time, the
        /// metric or a tag.
        #[arg(long, value_delimiter = ',')]
        value_columns: Vec<String>,
        /// Points per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Keep sending lines appended to the file until interrupted (Ctrl-C).
        #[arg(long)]
        follow: bool,
    },
    /// Print the windows of a metric's series.
    Range {
        metric: String,
        /// Tag equality matchers, `name=value`.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// How far back to look.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Print only the last N windows of each series.
        #[arg(long)]
        last: Option<usize>,
    },
    /// List the stored series, optionally of one metric.
    Series { metric: Option<String> },
    /// Run SQL on the store's tables (points, aggregates, alerts, and the tiers such as aggregates_1m)
    /// and print the result as a table.
    ///
    /// Examples:
    ///   runnel sql "SELECT metric, count(*) AS windows FROM aggregates GROUP BY metric"
    ///   runnel --json sql "SELECT id, state FROM alerts ORDER BY window_start_ns DESC LIMIT 5"
    #[command(verbatim_doc_comment)]
    Sql { query: String },
    /// A live view of the pipeline from every service's /metrics: whether each is ready, its rates,
    /// CPU and memory, and per partition the consumer lag and the processor's watermark delay.
    ///
    /// Examples:
    ///   runnel top
    ///   runnel top --ops processor=10.0.0.5:9464 --ops store=10.0.0.6:9464 --interval 5s
    ///   runnel --json top --once
    #[command(verbatim_doc_comment)]
    Top {
        /// A service's ops address, `name=host:port` (repeatable); by default the four services'
        /// default ops addresses on this host.
        #[arg(long = "ops", value_parser = parse_ops)]
        ops: Vec<(String, SocketAddr)>,
        /// Time between refreshes, and between the two scrapes each rate comes from.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print one view and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print a completion script for a shell.
    ///
    /// Example: runnel completions bash > ~/.local/share/bash-completion/completions/runnel
    Completions { shell: clap_complete::Shell },
    /// Forecast a series' window mean.
    Forecast {
        metric: String,
        /// The series' tags, `name=value`; all of them.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// How far past the latest window.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        horizon: Duration,
        /// Holt's linear smoothing instead of the least-squares line.
        #[arg(long)]
        holt: bool,
    },
    /// Print alert changes as they happen (or since a resume token), each followed by the token that
    /// resumes after it.
    Watch {
        /// Resume right after the change that printed this token.
        #[arg(long)]
        resume: Option<String>,
    },
    /// List alerts in their latest state, optionally only those in one state (pending, firing,
    /// resolved, inactive, no_data), of one rule or of one metric.
    Alerts {
        #[arg(long, value_parser = parse_state)]
        state: Option<AlertState>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        metric: Option<String>,
    },
    /// Replay recorded windows through the analyzer's models and rules and print the alerts the live
    /// analyzer would raise: a CSV file of one series (`timestamp` and `value` columns, one row per
    /// window; optionally write each row's anomaly score), or the store's aggregates.
    ///
    /// From the store, every series' windows are replayed in the order the analyzer read them (by
    /// partition and offset), so each partition's event time moves as it did live; the alerts equal the
    /// live analyzer's when `--since` reaches back to the start of its input (a later start gives the
    /// models less history).
    ///
    /// Examples:
    ///   runnel backtest data.csv --config deploy/local/analyzer.toml --metric cpu --scores out.csv
    ///   runnel backtest --from-store --since 6h --config deploy/local/analyzer.toml
    #[command(verbatim_doc_comment)]
    Backtest {
        #[arg(required_unless_present = "from_store", conflicts_with = "from_store")]
        csv: Option<PathBuf>,
        /// Replay the store's aggregates instead of a file.
        #[arg(long)]
        from_store: bool,
        /// With --from-store: the earliest window start, a time (RFC 3339) or how long ago (`6h`).
        #[arg(long, default_value = "24h", value_parser = parse_since, requires = "from_store")]
        since: i64,
        /// The analyzer settings file whose `[model]` and rules (`[[rules]]` and `rules_file`) are
        /// replayed (defaults otherwise).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The metric the rows belong to, which selects the rules and the detector.
        #[arg(long, default_value = "value", conflicts_with = "from_store")]
        metric: String,
        /// The series' tags, `name=value`.
        #[arg(long = "tag", value_parser = parse_tag, conflicts_with = "from_store")]
        tags: Vec<(String, String)>,
        /// Each row's window length; the smallest gap between rows when absent.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from_store")]
        window: Option<Duration>,
        /// Write `timestamp,value,anomaly_score` per row here (the detector output NAB scores).
        #[arg(long, conflicts_with = "from_store")]
        scores: Option<PathBuf>,
    },
    /// Work with alert rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Send dead-lettered points back to the points topic to be judged again. A consumer group remembers
    /// how far replays got, so each dead letter is replayed once.
    Replay {
        /// Kafka brokers.
        #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Which dead letters: late, future (repeatable); all that carry a point when absent.
        #[arg(long = "reason", value_parser = parse_reason)]
        reasons: Vec<Reason>,
        #[arg(long, default_value = plumbing::kafka::topics::DEADLETTER)]
        deadletter_topic: String,
        #[arg(long, default_value = plumbing::kafka::topics::POINTS)]
        points_topic: String,
        /// The consumer group that remembers replay progress.
        #[arg(long, default_value = "runnel-replay")]
        group: String,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run a rules test file (series written as values per window, and the alert changes expected)
    /// and print the alerts; exits 1 when they differ from the expected ones.
    ///
    /// Example: runnel rules test deploy/local/rules-test.toml
    Test { file: PathBuf },
}

fn parse_reason(text: &str) -> Result<Reason, String> {
    match text {
        "late" => Ok(Reason::Late),
        "future" => Ok(Reason::Future),
        "invalid" => Ok(Reason::Invalid),
        other => Err(format!("{other:?} is not one of late, future, invalid (malformed letters carry no point)")),
    }
}

fn parse_state(text: &str) -> Result<AlertState, String> {
    AlertState::from_str_name(&format!("ALERT_STATE_{}", text.to_ascii_uppercase()))
        .filter(|s| *s != AlertState::Unspecified)
        .ok_or_else(|| format!("{text:?} is not one of pending, firing, resolved, inactive, no_data"))
}

fn parse_ops(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = text.split_once('=').ok_or_else(|| format!("{text:?} is not name=host:port"))?;
    let addr = addr.parse().map_err(|err| format!("{addr:?}: {err}"))?;
    Ok((name.to_owned(), addr))
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

/// A time: RFC 3339 (`2026-11-26T10:00:00Z`, or without the zone, as UTC), or how long ago (`6h`).
fn parse_since(text: &str) -> Result<i64, String> {
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(now_ns() - nanos(ago)),
        Err(_) => analyzer::backtest::parse_time(text).ok_or_else(|| format!("{text:?} is neither a time (RFC 3339) nor a duration (`6h`)")),
    }
}

fn now_ns() -> i64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn time(ns: i64) -> String {
    let secs = u64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// What `--help` says of the exit codes.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 failure (or a rules test that did not match); 2 usage error; \
65 the service refused the input (invalid argument); 69 a service is unreachable or unavailable; \
77 not allowed (no or a wrong token or certificate).";

/// The exit code of `err`, from the gRPC status or connection failure anywhere in its chain
/// (sysexits.h codes).
fn exit_code(err: &anyhow::Error) -> u8 {
    use proto::tonic::Code;
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<proto::tonic::Status>() {
            return match status.code() {
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::NotFound => 65,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => 69,
                Code::Unauthenticated | Code::PermissionDenied => 77,
                _ => 1,
            };
        }
        if cause.downcast_ref::<proto::tonic::transport::Error>().is_some() {
            return 69;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut | std::io::ErrorKind::ConnectionReset)
        {
            return 69;
        }
    }
    1
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("runnel: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    let service = |name, url| connect::Service { name, url, access: &cli.access };
    let (collector, store, analyzer) = (service("collector", &cli.collector), service("store", &cli.store), service("analyzer", &cli.analyzer));
    match cli.command {
        Command::Demo { hosts, span } => demo(collector, hosts, span).await,
        Command::Send { file, format, metric, metric_column, time_column, time_unit, tag_columns, tags, value_columns, batch, follow } => {
            let mapping = send::Mapping { metric, metric_column, time_column, time_unit, tag_columns, tags: tags.into_iter().collect(), value_columns };
            let sent = send::send(collector, &file, format, &mapping, batch.max(1), follow).await?;
            println!("sent {} points from {} lines of {}, each acknowledged", sent.points, sent.lines, file.display());
            Ok(())
        }
        Command::Range { metric, tags, since, last } => range(store, metric, tags, since, last, json).await,
        Command::Series { metric } => series(store, metric, json).await,
        Command::Sql { query } => sql(store, &query, json).await,
        Command::Top { ops, interval, once } => top(ops, interval, once, json).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "runnel", &mut std::io::stdout());
            Ok(())
        }
        Command::Forecast { metric, tags, horizon, holt } => forecast(analyzer, metric, tags, horizon, holt, json).await,
        Command::Watch { resume } => watch(analyzer, resume.unwrap_or_default(), json).await,
        Command::Alerts { state, rule, metric } => list_alerts(analyzer, state, rule, metric, json).await,
        Command::Backtest { csv: Some(csv), config, metric, tags, window, scores, .. } => {
            backtest(&csv, config.as_deref(), Series { metric, tags: tags.into_iter().collect() }, window, scores.as_deref())
        }
        Command::Backtest { csv: None, config, since, .. } => backtest_store(store, config.as_deref(), since).await,
        Command::Rules(RulesCommand::Test { file }) => rules_test(&file),
        Command::Replay { brokers, reasons, deadletter_topic, points_topic, group } => {
            let kafka = plumbing::kafka::KafkaSettings { brokers, ..Default::default() };
            let request = processor::deadletter::Replay {
                deadletter_topic,
                points_topic,
                group,
                reasons,
                timeout: Duration::from_secs(300),
            };
            let done = processor::deadletter::replay(&kafka, &request).await?;
            println!("replayed {} points; skipped {} dead letters", done.sent, done.skipped);
            Ok(())
        }
    }
}

/// The analyzer settings of `file` (or the defaults), as the analyzer itself would load them.
fn analyzer_settings(file: Option<&Path>) -> anyhow::Result<analyzer::Settings> {
    Ok(plumbing::config::load("analyzer", file, std::iter::empty())?)
}

fn backtest(csv: &Path, config: Option<&Path>, series: Series, window: Option<Duration>, scores: Option<&Path>) -> anyhow::Result<()> {
    let settings = analyzer_settings(config)?;
    let file = std::fs::File::open(csv).with_context(|| format!("opening {}", csv.display()))?;
    let rows = analyzer::backtest::read_csv(std::io::BufReader::new(file), &series, window).with_context(|| format!("reading {}", csv.display()))?;
    let rules = settings.running_rules().map_err(anyhow::Error::msg)?;
    let outcome = analyzer::backtest::run(settings.model, rules, rows.iter().map(|r| (0, r.window.clone())));
    for alert in &outcome.alerts {
        print_alert(alert)?;
    }
    eprintln!("{} rows, {} alert changes", rows.len(), outcome.alerts.len());
    if let Some(path) = scores {
        let mut out = String::from("timestamp,value,anomaly_score\n");
        for (row, scored) in rows.iter().zip(&outcome.scores) {
            let score = scored.map_or(0.0, |s| s.score);
            out.push_str(&format!("{},{},{score}\n", row.timestamp, row.value));
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// How many stored windows one `Sql` answer carries during a backtest from the store.
const BACKTEST_PAGE: usize = 100_000;

async fn backtest_store(url: connect::Service<'_>, config: Option<&Path>, since: i64) -> anyhow::Result<()> {
    let settings = analyzer_settings(config)?;
    let rules = settings.running_rules().map_err(anyhow::Error::msg)?;
    let mut client = url.store().await?;
    let located = store::client::aggregates(&mut client, since, i64::MAX, BACKTEST_PAGE).await?;
    let windows = located.len();
    let outcome = analyzer::backtest::run(settings.model, rules, located.into_iter().map(|l| (l.partition, l.aggregate)));
    for alert in &outcome.alerts {
        print_alert(alert)?;
    }
    eprintln!("{windows} windows, {} alert changes", outcome.alerts.len());
    Ok(())
}

fn rules_test(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let test: analyzer::backtest::RulesTest = toml::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
    let config = test.config.as_ref().map(|c| file.parent().unwrap_or(Path::new(".")).join(c));
    let settings = analyzer_settings(config.as_deref())?;
    let mut rules = settings.running_rules().map_err(anyhow::Error::msg)?;
    rules.extend(test.rules.iter().cloned());
    let problems: Vec<String> = rules.iter().enumerate().flat_map(|(i, r)| r.problems().into_iter().map(move |(f, p)| format!("rules[{i}].{f}: {p}"))).collect();
    if !problems.is_empty() {
        bail!("invalid rules:\n  {}", problems.join("\n  "));
    }
    let windows = test.windows().map_err(anyhow::Error::msg)?;
    let outcome = analyzer::backtest::run(settings.model, rules, windows.into_iter().map(|w| (0, w)));
    let got = test.spell(&outcome.alerts);
    for alert in &got {
        println!("window {:>4}  {:<9} {}", alert.window, alert.state.to_uppercase(), alert.id);
    }
    if got == test.alerts {
        println!("ok: {} alert changes, as expected", got.len());
        return Ok(());
    }
    for missing in test.alerts.iter().filter(|e| !got.contains(e)) {
        println!("missing:    window {} {} {}", missing.window, missing.state, missing.id);
    }
    for extra in got.iter().filter(|g| !test.alerts.contains(g)) {
        println!("unexpected: window {} {} {}", extra.window, extra.state, extra.id);
    }
    if test.alerts.iter().all(|e| got.contains(e)) && got.iter().all(|g| test.alerts.contains(g)) {
        println!("the same alert changes, in another order");
    }
    std::process::exit(1);
}

async fn demo(url: connect::Service<'_>, hosts: usize, span: Duration) -> anyhow::Result<()> {
    let mut client = url.collector().await?;
    let end = now_ns() / 1_000_000_000 * 1_000_000_000;
    let seconds = i64::try_from(span.as_secs()).unwrap_or(i64::MAX);
    let mut batch = Vec::new();
    let mut written = 0u64;
    for t in 0..=seconds {
        let ts = end - (seconds - t) * 1_000_000_000;
        for host in 0..hosts {
            let phase = host as f64;
            let value = 20.0 + phase + 0.01 * t as f64 + 2.0 * ((t as f64) / 60.0 + phase).sin();
            batch.push(Point {
                metric: "demo_temperature".to_owned(),
                tags: BTreeMap::from([("host".to_owned(), format!("host-{host}"))]),
                timestamp_ns: ts,
                value,
            });
        }
        if batch.len() >= 1000 || t == seconds {
            written += client.write(WriteRequest { points: std::mem::take(&mut batch) }).await?.into_inner().accepted;
        }
    }
    println!("wrote {written} points for {hosts} series over the last {}", humantime::format_duration(span));
    Ok(())
}

fn selector(metric: String, tags: Vec<(String, String)>) -> SeriesSelector {
    let matchers =
        tags.into_iter().map(|(name, value)| TagMatcher { name, op: Op::Equal as i32, value }).collect();
    SeriesSelector { metric, matchers }
}

async fn range(
    url: connect::Service<'_>,
    metric: String,
    tags: Vec<(String, String)>,
    since: Duration,
    last: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = url.store().await?;
    let end = now_ns() + 60_000_000_000;
    let request =
        RangeRequest { selector: Some(selector(metric, tags)), start_ns: end - nanos(since), end_ns: end, ..RangeRequest::default() };
    let reply = client.range(request).await?.into_inner();
    if json {
        let series: Vec<serde_json::Value> = reply
            .series
            .iter()
            .map(|series| {
                let skip = last.map_or(0, |n| series.windows.len().saturating_sub(n));
                let windows: Vec<serde_json::Value> = series
                    .windows
                    .iter()
                    .skip(skip)
                    .map(|w| {
                        serde_json::json!({
                            "start": time(w.start_ns), "start_ns": w.start_ns, "end_ns": w.end_ns, "count": w.count, "sum": w.sum,
                            "mean": w.mean, "min": w.min, "max": w.max, "stddev": w.stddev, "gradient_per_second": w.gradient_per_second,
                        })
                    })
                    .collect();
                serde_json::json!({ "series": series.series.as_ref().map(series_json), "windows": windows })
            })
            .collect();
        println!("{}", serde_json::Value::Array(series));
        return Ok(());
    }
    if reply.series.is_empty() {
        println!("no windows stored yet");
    }
    for series in reply.series {
        let key = series.series.as_ref().map(Series::key).unwrap_or_default();
        println!("{key}");
        println!("  {:<22} {:>6} {:>12} {:>10} {:>10} {:>10} {:>12}", "window start", "count", "sum", "mean", "min", "max", "gradient/s");
        let skip = last.map_or(0, |n| series.windows.len().saturating_sub(n));
        for w in series.windows.iter().skip(skip) {
            let gradient = w.gradient_per_second.map_or_else(|| "-".to_owned(), |g| format!("{g:.5}"));
            println!(
                "  {:<22} {:>6} {:>12.3} {:>10.3} {:>10.3} {:>10.3} {:>12}",
                time(w.start_ns), w.count, w.sum, w.mean, w.min, w.max, gradient
            );
        }
    }
    Ok(())
}

/// A series as JSON: its metric and tags.
fn series_json(series: &Series) -> serde_json::Value {
    serde_json::json!({ "metric": series.metric, "tags": series.tags })
}

async fn series(url: connect::Service<'_>, metric: Option<String>, json: bool) -> anyhow::Result<()> {
    let mut client = url.store().await?;
    let selector = SeriesSelector { metric: metric.unwrap_or_default(), matchers: vec![] };
    let mut page_token = String::new();
    let mut all = Vec::new();
    // Page by page; bounded by the store, which returns an empty token on the last page.
    loop {
        let request = ListSeriesRequest { selector: Some(selector.clone()), page_size: 0, page_token };
        let page = client.list_series(request).await?.into_inner();
        for series in page.series {
            if json {
                all.push(series_json(&series));
            } else {
                println!("{}", series.key());
            }
        }
        if page.next_page_token.is_empty() {
            if json {
                println!("{}", serde_json::Value::Array(all));
            }
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

async fn sql(url: connect::Service<'_>, query: &str, json: bool) -> anyhow::Result<()> {
    let mut client = url.store().await?;
    let batches = store::client::sql(&mut client, query).await?;
    if json {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
        writer.finish()?;
        let text = String::from_utf8(writer.into_inner())?;
        // An empty answer writes nothing at all: it is an empty array.
        println!("{}", if text.is_empty() { "[]" } else { &text });
        return Ok(());
    }
    let rows: usize = batches.iter().map(arrow::array::RecordBatch::num_rows).sum();
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    eprintln!("{rows} row{}", if rows == 1 { "" } else { "s" });
    Ok(())
}

/// The ops addresses of the four services when run on this host with their defaults.
const DEFAULT_OPS: [(&str, u16); 4] = [("collector", 9464), ("processor", 9465), ("store", 9466), ("analyzer", 9467)];

async fn top(ops: Vec<(String, SocketAddr)>, interval: Duration, once: bool, json: bool) -> anyhow::Result<()> {
    let services = if ops.is_empty() {
        DEFAULT_OPS.iter().map(|(name, port)| ((*name).to_owned(), SocketAddr::from(([127, 0, 0, 1], *port)))).collect()
    } else {
        ops
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let rows = top::sample(&services, interval).await;
        if json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            // On a terminal the view redraws in place; into a pipe, each view follows the last.
            if terminal && !once {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", top::render(&rows));
        }
        if once {
            // Every service unreachable is a failure a script should see.
            if rows.iter().all(|row| row.error.is_some()) {
                let none = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no service answered on its ops address");
                return Err(none.into());
            }
            return Ok(());
        }
    }
}

async fn forecast(url: connect::Service<'_>, metric: String, tags: Vec<(String, String)>, horizon: Duration, holt: bool, json: bool) -> anyhow::Result<()> {
    let mut client = url.analyzer().await?;
    let series = Series { metric, tags: tags.into_iter().collect() };
    let model = if holt { ForecastModel::Holt } else { ForecastModel::Regression };
    let request = ForecastRequest { series: Some(series.clone()), horizon_ns: nanos(horizon), model: model as i32, confidence: 0.0 };
    let reply = client.forecast(request).await?.into_inner();
    if json {
        let answer = serde_json::json!({
            "series": series_json(&series), "value": reply.value, "at": time(reply.at_ns), "at_ns": reply.at_ns,
            "confidence": reply.confidence, "lower": reply.lower, "upper": reply.upper,
            "slope_per_second": reply.slope_per_second, "windows": reply.windows, "model": if holt { "holt" } else { "regression" },
        });
        println!("{answer}");
        return Ok(());
    }
    println!(
        "{}: {:.3} expected at {}, {:.0}% interval [{:.3}, {:.3}] (trend {:+.5}/s, {} windows, {})",
        series.key(),
        reply.value,
        time(reply.at_ns),
        reply.confidence * 100.0,
        reply.lower,
        reply.upper,
        reply.slope_per_second,
        reply.windows,
        if holt { "Holt" } else { "least squares" }
    );
    Ok(())
}

fn print_alert(alert: &proto::v1::Alert) -> anyhow::Result<()> {
    println!("{:<9} {} value {:.3} threshold {} window {}", alert_state(alert)?, alert.id, alert.value, alert.threshold, time(alert.window_start_ns));
    Ok(())
}

fn alert_state(alert: &proto::v1::Alert) -> anyhow::Result<&'static str> {
    match AlertState::try_from(alert.state) {
        Ok(AlertState::Unspecified) | Err(_) => bail!("unknown alert state {}", alert.state),
        Ok(known) => Ok(known.as_str_name().trim_start_matches("ALERT_STATE_")),
    }
}

fn alert_json(alert: &proto::v1::Alert) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "id": alert.id, "state": alert_state(alert)?.to_ascii_lowercase(), "rule": alert.rule,
        "series": alert.series.as_ref().map(series_json), "value": alert.value, "threshold": alert.threshold,
        "window_start": time(alert.window_start_ns), "window_start_ns": alert.window_start_ns,
    }))
}

async fn watch(url: connect::Service<'_>, resume_token: String, json: bool) -> anyhow::Result<()> {
    let mut client = url.analyzer().await?;
    let mut stream = client.watch_alerts(WatchAlertsRequest { resume_token }).await?.into_inner();
    while let Some(event) = stream.next().await {
        let event = event?;
        if json {
            let alert = event.alert.as_ref().map(alert_json).transpose()?;
            println!("{}", serde_json::json!({ "alert": alert, "resume_token": event.resume_token }));
            continue;
        }
        match &event.alert {
            Some(alert) => print_alert(alert)?,
            None => eprintln!("watching from {}", event.resume_token),
        }
        eprintln!("  resume: {}", event.resume_token);
    }
    Ok(())
}

async fn list_alerts(url: connect::Service<'_>, state: Option<AlertState>, rule: Option<String>, metric: Option<String>, json: bool) -> anyhow::Result<()> {
    let mut client = url.analyzer().await?;
    let request = ListAlertsRequest {
        state: state.map_or(0, |s| s as i32),
        rule: rule.unwrap_or_default(),
        metric: metric.unwrap_or_default(),
        ..ListAlertsRequest::default()
    };
    let reply = client.list_alerts(request).await?.into_inner();
    if json {
        let alerts = reply.alerts.iter().map(alert_json).collect::<anyhow::Result<Vec<_>>>()?;
        println!("{}", serde_json::json!({ "alerts": alerts, "truncated": reply.truncated }));
        return Ok(());
    }
    for alert in &reply.alerts {
        print_alert(alert)?;
    }
    eprintln!("{} alerts{}", reply.alerts.len(), if reply.truncated { " (more matched)" } else { "" });
    Ok(())
}
