//! `runnel-bench pipeline`: the four services as the processes users run (the binaries beside this
//! one), on one broker, under the load generator.
//!
//! 1. Maximum rate: the load as fast as the collector takes it, with the whole pipeline running; the
//!    collector's acknowledged rate, and the sustained rate (points over the time until the processor
//!    has merged and the store has kept every one). Beside it, in the same run, a bare rdkafka producer
//!    sends the same points with the collector's settings (the ingest ceiling).
//! 2. Latency at fixed fractions of the sustained rate, with probe series: from the moment a window may
//!    close (its end plus the allowed lateness; event time is the wall clock) to (a) its aggregate
//!    answering a `Sql` query on the store and (b) the alert it changes arriving on `WatchAlerts`.
//! 3. The processor alone draining the points the first run wrote, beside a bare consumer and a bare
//!    transactional consume-then-produce passthrough over the same topic (the consume and the
//!    exactly-once ceilings).
//!
//! CPU seconds and resident memory are each process's own, from Linux's accounting (/proc/<pid>).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt as _;
use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::prost::Message as _;
use proto::v1::analyzer_service_client::AnalyzerServiceClient;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::{AlertState, Point, WatchAlertsRequest, WriteRequest};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::load::{self, Generator, Report, Spec, quantile_ms};
use crate::process::{Service, free_addr};
use crate::store::{Run, cpu_seconds};
use crate::{S, now_ns, send, unique};

/// The processor's defaults, which the run keeps: what a user gets.
const WINDOW_NS: i64 = 10 * S;
const LATENESS_NS: i64 = 5 * S;
/// How often the probe series get a point, and the store is asked for their windows.
const PROBE_EVERY: Duration = Duration::from_millis(100);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long past a paced run the store and the alerts are still watched.
const TAIL: Duration = Duration::from_secs(3);
/// The probes' spike, and the alert rule's level below it.
const SPIKE: f64 = 1e9;
const RULES: &str = "[[rules]]\nname = \"probe_high\"\nmetric = \"probe\"\nfield = \"max\"\nop = \">\"\nthreshold = 1e6\n";

pub(crate) struct Options {
    /// The load's shape; its rate and duration are set per run.
    pub(crate) spec: Spec,
    pub(crate) partitions: i32,
    /// Fractions of the sustained rate the latency runs go at.
    pub(crate) fractions: Vec<f64>,
    /// How long each latency run lasts.
    pub(crate) latency_duration: Duration,
    /// Probe series (each gives a latency sample per window).
    pub(crate) probes: u64,
    /// Settings beyond the defaults, as environment variables, for every service process.
    pub(crate) env: Vec<(String, String)>,
}

/// The four services on fresh topics and groups.
struct Pipeline {
    collector: Service,
    processor: Service,
    store: Service,
    analyzer: Service,
    grpc: SocketAddr,
    http: SocketAddr,
    store_grpc: SocketAddr,
    analyzer_grpc: SocketAddr,
    points: TopicSettings,
}

impl Pipeline {
    async fn start(kafka: &KafkaSettings, dir: &Path, partitions: i32, settings: &[(String, String)]) -> anyhow::Result<Self> {
        let topic = |name: &str, partitions: i32| TopicSettings { name: unique(name), partitions, replication_factor: 1 };
        let (points, aggregates, alerts, deadletter) =
            (topic("bench-points", partitions), topic("bench-aggregates", partitions), topic("bench-alerts", 1), topic("bench-deadletter", 1));
        kafka.ensure_topics(&[&points, &aggregates, &alerts, &deadletter]).await?;
        let rules = dir.join("rules.toml");
        std::fs::write(&rules, RULES)?;
        let (grpc, http, store_grpc, analyzer_grpc) = (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
        let env = |pairs: &[(&str, String)]| {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).chain(settings.iter().cloned()).collect::<Vec<_>>()
        };
        let mut store = Service::spawn(
            "store",
            dir,
            kafka,
            &env(&[
                ("RUNNEL_STORE__GROUP_ID", unique("bench-store")),
                ("RUNNEL_STORE__GRPC__LISTEN", store_grpc.to_string()),
                ("RUNNEL_STORE__TOPICS__POINTS__NAME", points.name.clone()),
                ("RUNNEL_STORE__TOPICS__AGGREGATES__NAME", aggregates.name.clone()),
                ("RUNNEL_STORE__TOPICS__ALERTS__NAME", alerts.name.clone()),
                ("RUNNEL_STORE__STORAGE__PATH", dir.join("store").display().to_string()),
            ]),
        )?;
        let mut processor = spawn_processor(kafka, dir, &points, &aggregates, &deadletter, &borrowed(settings))?;
        let mut analyzer = Service::spawn(
            "analyzer",
            dir,
            kafka,
            &env(&[
                ("RUNNEL_ANALYZER__GROUP_ID", unique("bench-analyzer")),
                ("RUNNEL_ANALYZER__TRANSACTIONAL_ID", unique("bench-analyzer")),
                ("RUNNEL_ANALYZER__GRPC__LISTEN", analyzer_grpc.to_string()),
                ("RUNNEL_ANALYZER__TOPICS__AGGREGATES__NAME", aggregates.name.clone()),
                ("RUNNEL_ANALYZER__TOPICS__ALERTS__NAME", alerts.name.clone()),
                ("RUNNEL_ANALYZER__TOPICS__CHANGELOG__NAME", unique("bench-analyzer-changelog")),
                ("RUNNEL_ANALYZER__RULES_FILE", rules.display().to_string()),
            ]),
        )?;
        let mut collector = Service::spawn(
            "collector",
            dir,
            kafka,
            &env(&[
                ("RUNNEL_COLLECTOR__GRPC__LISTEN", grpc.to_string()),
                ("RUNNEL_COLLECTOR__HTTP__LISTEN", http.to_string()),
                ("RUNNEL_COLLECTOR__TOPICS__POINTS__NAME", points.name.clone()),
                ("RUNNEL_COLLECTOR__TOPICS__DEADLETTER__NAME", deadletter.name.clone()),
            ]),
        )?;
        for service in [&mut store, &mut processor, &mut analyzer, &mut collector] {
            service.ready().await?;
        }
        Ok(Self { collector, processor, store, analyzer, grpc, http, store_grpc, analyzer_grpc, points })
    }

    fn services(&self) -> [&Service; 4] {
        [&self.collector, &self.processor, &self.store, &self.analyzer]
    }

    fn target(&self) -> load::Target {
        load::Target { grpc: format!("http://{}", self.grpc), http: format!("http://{}", self.http) }
    }

    fn cpu(&self) -> [f64; 4] {
        self.services().map(Service::cpu)
    }

    /// Waits until the processor has handled (merged, or dead-lettered as late) and the store has kept
    /// `points` points; returns when that happened.
    async fn caught_up(&self, points: u64) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let merged = self.processor.metric("runnel_processor_points_total").await.unwrap_or(0.0);
            let late = self.processor.metric("runnel_processor_late_points_total").await.unwrap_or(0.0);
            let kept = self.store.metric(r#"runnel_store_rows_total{kind="points"}"#).await.unwrap_or(0.0);
            if merged + late >= points as f64 && kept >= points as f64 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("after 10 minutes the processor handled {merged} + {late} and the store kept {kept} of {points} points");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        self.collector.stop()?;
        self.processor.stop()?;
        self.analyzer.stop()?;
        self.store.stop()
    }
}

/// `settings` as `spawn_processor` takes them.
fn borrowed(settings: &[(String, String)]) -> Vec<(&str, String)> {
    settings.iter().map(|(name, value)| (name.as_str(), value.clone())).collect()
}

/// A processor of a fresh group from `points` to `aggregates`, with the defaults and `extra` on top.
pub(crate) fn spawn_processor(
    kafka: &KafkaSettings,
    dir: &Path,
    points: &TopicSettings,
    aggregates: &TopicSettings,
    deadletter: &TopicSettings,
    extra: &[(&str, String)],
) -> anyhow::Result<Service> {
    let mut env = vec![
        ("RUNNEL_PROCESSOR__GROUP_ID", unique("bench-processor")),
        ("RUNNEL_PROCESSOR__TRANSACTIONAL_ID", unique("bench-processor")),
        ("RUNNEL_PROCESSOR__TOPICS__POINTS__NAME", points.name.clone()),
        ("RUNNEL_PROCESSOR__TOPICS__POINTS__PARTITIONS", points.partitions.to_string()),
        ("RUNNEL_PROCESSOR__TOPICS__AGGREGATES__NAME", aggregates.name.clone()),
        ("RUNNEL_PROCESSOR__TOPICS__DEADLETTER__NAME", deadletter.name.clone()),
    ];
    env.extend_from_slice(extra);
    Service::spawn("processor", dir, kafka, &env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Vec<_>>())
}

/// One run's figures per service.
struct Costs {
    /// CPU seconds per million points: collector, processor, store, analyzer.
    cpu_per_million: [f64; 4],
    /// Resident MiB at the end, and at the peak.
    memory: [(f64, f64); 4],
}

impl Costs {
    fn of(pipeline: &Pipeline, before: [f64; 4], points: u64) -> Self {
        let after = pipeline.cpu();
        let cpu_per_million = std::array::from_fn(|i| (after[i] - before[i]) / points as f64 * 1e6);
        let memory = pipeline.services().map(|s| s.process.memory_mib());
        Self { cpu_per_million, memory }
    }
}

/// The latency samples of a paced run, in milliseconds from a window's earliest close.
#[derive(Debug, Default)]
struct Latencies {
    queryable: Vec<Duration>,
    alerted: Vec<Duration>,
}

pub(crate) async fn pipeline_bench(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    o.spec.check()?;
    let dir = std::env::temp_dir().join(unique("runnel-bench-pipeline"));
    std::fs::create_dir_all(&dir)?;
    let pipeline = Pipeline::start(kafka, &dir, o.partitions, &o.env).await?;

    // 1. The maximum rate, the whole pipeline running.
    let spec = Spec { rate: 0.0, ..o.spec.clone() };
    let generator = Generator::new(spec.clone());
    let before = pipeline.cpu();
    let started = Instant::now();
    let report = load::run(&pipeline.target(), &generator).await?;
    eprintln!("maximum: the collector acknowledged {:.0} points/s", report.rate());
    let caught_up = pipeline.caught_up(report.accepted).await?;
    let sustained = report.accepted as f64 / caught_up.duration_since(started).as_secs_f64();
    eprintln!("maximum: sustained {sustained:.0} points/s through the processor and the store");
    let costs = Costs::of(&pipeline, before, report.accepted);
    let bare = bare_producer(kafka, &generator, report.requests as usize, o.partitions).await?;
    eprintln!("bare producer: {:.0} points/s", bare.rate());

    // 2. Latency at fractions of the sustained rate.
    let mut paced = Vec::new();
    let mut accepted = report.accepted;
    for &fraction in &o.fractions {
        let rate = sustained * fraction;
        let spec = Spec { rate, duration: o.latency_duration, out_of_order: o.spec.out_of_order.max(0.01), ..o.spec.clone() };
        let before = pipeline.cpu();
        let (report, latencies) = latency_run(&pipeline, &spec, o.probes).await?;
        accepted += report.accepted;
        pipeline.caught_up(accepted).await?;
        eprintln!(
            "at {fraction} of sustained ({rate:.0} points/s): queryable p99 {:.0} ms ({}), alerted p99 {:.0} ms ({})",
            quantile_ms(&latencies.queryable, 0.99),
            latencies.queryable.len(),
            quantile_ms(&latencies.alerted, 0.99),
            latencies.alerted.len()
        );
        let costs = Costs::of(&pipeline, before, report.accepted);
        paced.push((fraction, rate, report, latencies, costs));
    }
    let points_topic = pipeline.points.clone();
    pipeline.stop()?;

    // 3. Draining the points topic: the processor alone, a bare consumer, a bare passthrough.
    let drain = drain_runs(kafka, &dir, &points_topic, accepted, &o.env).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(write_up(o, &report, sustained, &costs, &bare, &paced, &drain))
}

/// A paced run with probes: returns the load's report and the probes' latencies.
async fn latency_run(pipeline: &Pipeline, spec: &Spec, probes: u64) -> anyhow::Result<(Report, Latencies)> {
    let since = now_ns() / WINDOW_NS * WINDOW_NS;
    let until = Instant::now() + spec.duration;
    let generator = Generator::new(spec.clone());
    let probing = tokio::spawn(probe(pipeline.grpc, probes, until));
    // The windows that close within the run are answered within a second or two of it.
    let watching = tokio::spawn(watch_alerts(pipeline.analyzer_grpc, until + TAIL));
    let polling = tokio::spawn(poll_store(pipeline.store_grpc, since, until + TAIL));
    let report = load::run(&pipeline.target(), &generator).await?;
    let probe_points = probing.await??;
    // Only windows that closed inside the run (the probes stop with it) count.
    let last_close = since.max(now_ns() / WINDOW_NS * WINDOW_NS);
    let alerted = watching.await??;
    let seen = polling.await??;
    let latencies = Latencies {
        queryable: seen.into_iter().filter(|(start, _)| *start + WINDOW_NS <= last_close).map(|(_, d)| d).collect(),
        alerted: alerted.into_iter().filter(|(end, _)| *end <= last_close).map(|(_, d)| d).collect(),
    };
    Ok((Report { accepted: report.accepted + probe_points, ..report }, latencies))
}

/// Writes a point to each probe series every `PROBE_EVERY` until `until`: the spike in even windows,
/// 0 in odd ones, so that every window's close changes every probe's alert. Returns the points written.
async fn probe(collector: SocketAddr, probes: u64, until: Instant) -> anyhow::Result<u64> {
    let mut client = IngestServiceClient::connect(format!("http://{collector}")).await?;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut written = 0;
    while Instant::now() < until {
        tick.tick().await;
        let now = now_ns();
        let value = if (now / WINDOW_NS) % 2 == 0 { SPIKE } else { 0.0 };
        let points: Vec<Point> = (0..probes)
            .map(|p| Point { metric: "probe".into(), tags: [("probe".to_owned(), p.to_string())].into(), timestamp_ns: now, value })
            .collect();
        written += client.write(WriteRequest { points }).await?.into_inner().accepted;
    }
    Ok(written)
}

/// Asks the store every `POLL_EVERY` how many probe series each window since `since` has; each series
/// that appears counts from its window's earliest close. Returns (window start, latency) per series
/// and window.
async fn poll_store(store: SocketAddr, since: i64, until: Instant) -> anyhow::Result<Vec<(i64, Duration)>> {
    let mut client = QueryServiceClient::connect(format!("http://{store}")).await?;
    let query = format!("SELECT start_ns, count(*) AS n FROM aggregates WHERE metric = 'probe' AND start_ns >= {since} GROUP BY start_ns");
    let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
    let mut samples = Vec::new();
    while Instant::now() < until {
        let batches = store::client::sql(&mut client, &query).await?;
        let at = now_ns();
        for batch in &batches {
            let starts = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int64)?;
            let counts = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Int64)?;
            let (starts, counts) = (arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&starts), arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&counts));
            for (start, count) in starts.values().iter().zip(counts.values()) {
                let before = seen.insert(*start, *count).unwrap_or(0);
                let close = start + WINDOW_NS + LATENESS_NS;
                let latency = Duration::from_nanos(u64::try_from(at - close).unwrap_or(0));
                samples.extend(std::iter::repeat_n((*start, latency), usize::try_from(count - before).unwrap_or(0)));
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    Ok(samples)
}

/// Every alert change of the probe rule on `WatchAlerts` until `until`: (window end, latency from the
/// window's earliest close).
async fn watch_alerts(analyzer: SocketAddr, until: Instant) -> anyhow::Result<Vec<(i64, Duration)>> {
    let mut client = AnalyzerServiceClient::connect(format!("http://{analyzer}")).await?;
    let mut events = client.watch_alerts(WatchAlertsRequest::default()).await?.into_inner();
    let mut samples = Vec::new();
    loop {
        let next = tokio::time::timeout_at(tokio::time::Instant::from_std(until), events.next()).await;
        let Ok(Some(event)) = next else { break };
        let Some(alert) = event?.alert else { continue };
        let at = now_ns();
        if alert.rule == "probe_high" && matches!(alert.state(), AlertState::Firing | AlertState::Resolved) {
            let close = alert.window_end_ns + LATENESS_NS;
            samples.push((alert.window_end_ns, Duration::from_nanos(u64::try_from(at - close).unwrap_or(0))));
        }
    }
    Ok(samples)
}

/// The ingest ceiling: the same requests' points, keyed and encoded as the collector writes them
/// before the clock starts, sent by a bare producer with the collector's settings into a fresh topic.
async fn bare_producer(kafka: &KafkaSettings, generator: &Generator, requests: usize, partitions: i32) -> anyhow::Result<Run> {
    let topic = TopicSettings { name: unique("bench-bare"), partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&topic]).await?;
    let now = now_ns();
    let encoded: Vec<(String, Vec<u8>)> =
        (0..requests).flat_map(|i| generator.request(i, now)).map(|p| (p.series_key(), p.encode_to_vec())).collect();
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = kafka.producer_holding("bench-bare", 200_000).create()?;
        let (started, cpu) = (Instant::now(), cpu_seconds());
        for (key, payload) in &encoded {
            send(&producer, &topic.name, key.as_bytes(), payload)?;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(300))?;
        Ok(Run { seconds: started.elapsed().as_secs_f64(), records: encoded.len() as u64, cpu: cpu_seconds() - cpu })
    })
    .await?
}

/// The drains of the points topic the runs wrote (`points` records).
struct Drains {
    processor: Run,
    consumer: Run,
    passthrough: Run,
}

async fn drain_runs(kafka: &KafkaSettings, dir: &Path, points: &TopicSettings, records: u64, settings: &[(String, String)]) -> anyhow::Result<Drains> {
    let consumer = {
        let (kafka, topic) = (kafka.clone(), points.name.clone());
        tokio::task::spawn_blocking(move || crate::store::drain(&kafka, &topic, records)).await??
    };
    eprintln!("drain: bare consumer {:.0} points/s", consumer.rate());
    let passthrough = {
        let (kafka, input) = (kafka.clone(), points.clone());
        let output = TopicSettings { name: unique("bench-passthrough-out"), partitions: points.partitions, replication_factor: 1 };
        kafka.ensure_topics(&[&output]).await?;
        tokio::task::spawn_blocking(move || crate::run_passthrough(&kafka, &input, &output.name, records)).await??
    };
    let passthrough = Run { seconds: passthrough.seconds, records: passthrough.points, cpu: f64::NAN };
    eprintln!("drain: bare transactional passthrough {:.0} points/s", passthrough.rate());
    // A processor of its own group and outputs, from the start of the topic.
    let topic = |name: &str| TopicSettings { name: unique(name), partitions: points.partitions, replication_factor: 1 };
    let (aggregates, deadletter) = (topic("bench-drain-aggregates"), topic("bench-drain-deadletter"));
    kafka.ensure_topics(&[&aggregates, &deadletter]).await?;
    let mut processor = spawn_processor(kafka, dir, points, &aggregates, &deadletter, &borrowed(settings))?;
    processor.ready().await?;
    let (started, cpu) = (Instant::now(), processor.cpu());
    let deadline = started + Duration::from_secs(600);
    loop {
        let merged = processor.metric("runnel_processor_points_total").await.unwrap_or(0.0);
        let late = processor.metric("runnel_processor_late_points_total").await.unwrap_or(0.0);
        if merged + late >= records as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the draining processor handled {merged} + {late} of {records} points in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let processor_run = Run { seconds: started.elapsed().as_secs_f64(), records, cpu: processor.cpu() - cpu };
    processor.stop()?;
    eprintln!("drain: processor {:.0} points/s", processor_run.rate());
    Ok(Drains { processor: processor_run, consumer, passthrough })
}

const SERVICES: [&str; 4] = ["collector", "processor", "store", "analyzer"];

fn write_up(
    o: &Options,
    max: &Report,
    sustained: f64,
    costs: &Costs,
    bare: &Run,
    paced: &[(f64, f64, Report, Latencies, Costs)],
    drain: &Drains,
) -> String {
    let spec = &o.spec;
    let mut out = format!(
        "{}\n\nThe four services run as the processes users run (the release binaries, default settings: 10 s tumbling \
         windows, 5 s allowed lateness, exactly once, 1 s commits and closed windows committed early; the store's 1 s flushes), on fresh topics of {} \
         partitions. The load generator (`runnel-bench load`) sends {} series ({} tags each) in requests of {} points from {} \
         clients over {}; seed {}.\n\n",
        crate::machine(),
        o.partitions,
        spec.series,
        spec.tags.max(1),
        spec.batch,
        spec.clients,
        spec.protocol.name(),
        spec.seed
    );
    if !o.env.is_empty() {
        let changed: Vec<String> = o.env.iter().map(|(name, value)| format!("`{name}={value}`")).collect();
        out.push_str(&format!("Settings changed from the defaults, in every service process: {}.\n\n", changed.join(", ")));
    }
    out.push_str(&format!(
        "### Maximum rate\n\nThe load as fast as the collector acknowledges it for {} s, the whole pipeline running. \
         Sustained: the points over the time until the processor had merged and the store had kept every one. Beside it, a \
         bare rdkafka producer (the collector's settings: acks=all, idempotent, lz4, linger 5 ms) sends the same points, keyed \
         and encoded as the collector writes them before its clock starts.\n\n\
         | run | points/s | ratio |\n|---|---|---|\n\
         | bare rdkafka producer (baseline) | {:.0} | 1.00 |\n\
         | collector acknowledged, pipeline running | {:.0} | {:.2} |\n\
         | sustained through processor and store | {:.0} | {:.2} |\n\n\
         Request latency at the maximum rate: p50 {:.1} ms, p99 {:.1} ms.\n\n",
        spec.duration.as_secs(),
        bare.rate(),
        max.rate(),
        max.rate() / bare.rate(),
        sustained,
        sustained / bare.rate(),
        max.latency_ms(0.5),
        max.latency_ms(0.99),
    ));
    out.push_str("| service | CPU s per million points | resident MiB at the end | peak resident MiB |\n|---|---|---|---|\n");
    for (i, name) in SERVICES.iter().enumerate() {
        out.push_str(&format!("| {name} | {:.2} | {:.0} | {:.0} |\n", costs.cpu_per_million[i], costs.memory[i].0, costs.memory[i].1));
    }
    out.push_str(&format!(
        "\n### Latency\n\nThe load paced at fractions of the sustained rate for {} s each, 1% of its points out of order \
         (up to {} ms), beside {} probe series that get a point every {} ms: a spike in even windows, nothing in odd ones, \
         under one alert rule (`max > 1e6`), so that every window's close changes every probe's alert. Event time is the \
         wall clock, so a window may close at its end plus the allowed lateness; each latency counts from that moment \
         to (a) its aggregate answering a `Sql` query on the store (asked every {} ms, so up to that much is the asking's) \
         and (b) its alert change arriving on `WatchAlerts`. Only windows that closed within the run count.\n\n\
         | fraction | points/s | windows queryable | p50 ms | p99 ms | p99.9 ms | alerts | p50 ms | p99 ms | p99.9 ms | request p99 ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        o.latency_duration.as_secs(),
        spec.disorder.as_millis(),
        o.probes,
        PROBE_EVERY.as_millis(),
        POLL_EVERY.as_millis()
    ));
    for (fraction, rate, report, latencies, _) in paced {
        let (q, a) = (&latencies.queryable, &latencies.alerted);
        out.push_str(&format!(
            "| {fraction} | {rate:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            q.len(),
            quantile_ms(q, 0.5),
            quantile_ms(q, 0.99),
            quantile_ms(q, 0.999),
            a.len(),
            quantile_ms(a, 0.5),
            quantile_ms(a, 0.99),
            quantile_ms(a, 0.999),
            report.latency_ms(0.99)
        ));
    }
    out.push_str("\nCPU seconds per million points in the paced runs (the probes' points counted with the load's):\n\n| fraction |");
    for name in SERVICES {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|---|---|---|---|\n");
    for (fraction, _, _, _, costs) in paced {
        out.push_str(&format!("| {fraction} |"));
        for cpu in costs.cpu_per_million {
            out.push_str(&format!(" {cpu:.2} |"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "\n### Draining the points topic\n\nAfter the runs, the {} points they wrote are read again from the start: by a \
         bare rdkafka consumer (`read_committed`, counting), by a bare transactional consume-then-produce passthrough \
         (every record forwarded, offsets committed in the transaction every 100 ms: the exactly-once ceiling), and by a \
         processor process of a fresh group (exactly once), timed from its readiness to its last point handled.\n\n\
         | run | points/s | ratio to the consumer | ratio to the passthrough | CPU s per million |\n|---|---|---|---|---|\n\
         | bare consumer (baseline) | {:.0} | 1.00 | | {:.2} |\n\
         | bare transactional passthrough (baseline) | {:.0} | {:.2} | 1.00 | |\n\
         | processor, exactly once | {:.0} | {:.2} | {:.2} | {:.2} |\n",
        drain.processor.records,
        drain.consumer.rate(),
        drain.consumer.cpu / drain.consumer.records as f64 * 1e6,
        drain.passthrough.rate(),
        drain.passthrough.rate() / drain.consumer.rate(),
        drain.processor.rate(),
        drain.processor.rate() / drain.consumer.rate(),
        drain.processor.rate() / drain.passthrough.rate(),
        drain.processor.cpu / drain.processor.records as f64 * 1e6,
    ));
    out.push_str(&targets(max.rate() / bare.rate(), paced, drain.processor.rate() / drain.passthrough.rate()));
    out
}

/// The figures against the targets Runnel sets itself, each from this run.
fn targets(ingest_ratio: f64, paced: &[(f64, f64, Report, Latencies, Costs)], exactly_once_ratio: f64) -> String {
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let mut out = format!(
        "\n### Against the targets\n\n| target | measured | |\n|---|---|---|\n\
         | ingest at least 0.8 of the bare producer (the collector with the whole pipeline on the same cores; the producer alone) | {ingest_ratio:.2} | {} |\n\
         | the processor exactly once at least 0.5 of the bare transactional passthrough | {exactly_once_ratio:.2} | {} |\n",
        met(ingest_ratio >= 0.8),
        met(exactly_once_ratio >= 0.5)
    );
    for (fraction, _, _, latencies, _) in paced {
        let (queryable, alerted) = (quantile_ms(&latencies.queryable, 0.99), quantile_ms(&latencies.alerted, 0.99));
        out.push_str(&format!(
            "| at {fraction} of the sustained rate, a window queryable within 250 ms p99 of its close | {queryable:.0} ms | {} |\n\
             | at {fraction} of the sustained rate, its alert on `WatchAlerts` within 1 s p99 | {alerted:.0} ms | {} |\n",
            met(queryable <= 250.0),
            met(alerted <= 1000.0)
        ));
    }
    out
}
