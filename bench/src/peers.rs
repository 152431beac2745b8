//! `runnel-bench peers`: the same job (per-series 10 s tumbling windows of count, sum, mean, min and
//! max, exactly once, final results only) over the same topic and data in Runnel's processor, in Kafka
//! Streams (bench/peers/kstreams, built with Maven) and in Quix Streams (bench/peers/quix, from PyPI),
//! one after the other, each as a process of its own.
//!
//! Throughput: a topic loaded once (one point per series per second of event time, an hour ago, then a
//! point on every partition a minute past the rest so that every window closes), drained by each
//! engine from its readiness to the last window result committed. Every result is checked: each
//! window once, and the counts and sums add up to exactly what was loaded.
//!
//! Latency: each engine live under a paced producer whose event time is the wall clock, from the moment
//! a window may close (its end plus the grace) to its result being readable (`read_committed`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Point};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

use crate::load::quantile_ms;
use crate::pipeline::spawn_processor;
use crate::process::{Process, Service};
use crate::{S, now_ns, send, unique};

const WINDOW_NS: i64 = 10 * S;

pub(crate) struct Options {
    pub(crate) points: u64,
    pub(crate) series: u64,
    pub(crate) partitions: i32,
    /// The grace (Runnel's allowed lateness) of every engine.
    pub(crate) grace: Duration,
    /// The paced producer's rate and time, and its series, for the latency runs.
    pub(crate) rate: f64,
    pub(crate) latency_duration: Duration,
    pub(crate) latency_series: u64,
    /// The paced runs' first seconds, whose windows do not count: an engine's start-up work (Kafka
    /// Streams' first record of each new task costs seconds) is not its latency.
    pub(crate) warm_up: Duration,
    /// Kafka Streams' stream threads.
    pub(crate) threads: usize,
    /// bench/peers: the Kafka Streams jar and the Quix Streams virtualenv are under it.
    pub(crate) peers: PathBuf,
    /// Engines to run, of runnel, kstreams, quix.
    pub(crate) engines: Vec<Engine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    Runnel,
    Kstreams,
    Quix,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Self::Runnel => "Runnel processor",
            Self::Kstreams => "Kafka Streams 4.4.0",
            Self::Quix => "Quix Streams 3.28.1",
        }
    }
}

/// One window result, as read back.
#[derive(Debug, Clone, Copy)]
struct Result1 {
    start_ms: i64,
    count: u64,
    sum: f64,
}

/// A running engine: a Runnel processor (ready at `/readyz`) or a peer (ready when it prints `running`).
enum Running {
    Runnel(Service),
    Peer(Process),
}

impl Running {
    fn process(&self) -> &Process {
        match self {
            Self::Runnel(service) => &service.process,
            Self::Peer(process) => process,
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Runnel(service) => service.stop(),
            Self::Peer(process) => process.stop(),
        }
    }
}

/// Starts `engine` from `input` to `output` and waits until it is ready.
async fn start(engine: Engine, kafka: &KafkaSettings, o: &Options, input: &TopicSettings, output: &TopicSettings, dir: &Path) -> anyhow::Result<Running> {
    let grace_ms = o.grace.as_millis().to_string();
    let common = |group_flag: &str, group: String| {
        vec![
            "--brokers".to_owned(),
            kafka.brokers.clone(),
            "--input".to_owned(),
            input.name.clone(),
            "--output".to_owned(),
            output.name.clone(),
            group_flag.to_owned(),
            group,
            "--grace-ms".to_owned(),
            grace_ms.clone(),
            "--commit-interval-ms".to_owned(),
            "100".to_owned(),
        ]
    };
    Ok(match engine {
        Engine::Runnel => {
            let deadletter = TopicSettings { name: unique("bench-peers-deadletter"), partitions: 1, replication_factor: 1 };
            kafka.ensure_topics(&[&deadletter]).await?;
            let lateness = humantime::format_duration(o.grace).to_string();
            let extra = [("RUNNEL_PROCESSOR__WINDOWS__ALLOWED_LATENESS", if o.grace.is_zero() { "0s".to_owned() } else { lateness })];
            let mut service = spawn_processor(kafka, dir, input, output, &deadletter, &extra)?;
            service.ready().await?;
            Running::Runnel(service)
        }
        Engine::Kstreams => {
            let jar = o.peers.join("kstreams/target/runnel-kstreams-peer.jar");
            if !jar.exists() {
                bail!("{} is missing: bench/peers/setup.sh builds it", jar.display());
            }
            // The JVM's temporary files (RocksDB's native library, 15 MB a run, which a JVM ended by a
            // signal leaves behind) go under the run's folder, which the bench removes.
            let mut args = vec![format!("-Djava.io.tmpdir={}", dir.display()), "-jar".to_owned(), jar.display().to_string()];
            args.extend(common("--application-id", unique("bench-kstreams")));
            args.extend(["--threads".to_owned(), o.threads.to_string(), "--state-dir".to_owned(), dir.join(unique("kstreams-state")).display().to_string()]);
            let mut process = Process::spawn(&unique("kstreams"), Path::new("java"), &args, &[], dir)?;
            process.wait_for_line("running", Duration::from_secs(120)).await?;
            Running::Peer(process)
        }
        Engine::Quix => {
            let python = o.peers.join("quix/.venv/bin/python");
            if !python.exists() {
                bail!("{} is missing: bench/peers/setup.sh makes it", python.display());
            }
            let mut args = vec![o.peers.join("quix/peer.py").display().to_string()];
            args.extend(common("--group", unique("bench-quix")));
            args.extend(["--state-dir".to_owned(), dir.join(unique("quix-state")).display().to_string()]);
            let mut process = Process::spawn(&unique("quix"), &python, &args, &[], dir)?;
            process.wait_for_line("running", Duration::from_secs(120)).await?;
            Running::Peer(process)
        }
    })
}

/// Reads every window result of `output` as it is committed, with the moment it was read, until `stop`.
fn read_results(kafka: &KafkaSettings, engine: Engine, output: &str, stop: &AtomicBool, seen: &Mutex<Vec<(String, Result1, Instant)>>) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka.consumer("bench-peers-results", &unique("bench-peers-results")).create()?;
    consumer.subscribe(&[output])?;
    while !stop.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(20)) else { continue };
        let message = message?;
        let at = Instant::now();
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload = message.payload().unwrap_or_default();
        let result = match engine {
            Engine::Runnel => {
                let aggregate = Aggregate::decode(payload).context("an aggregate that is not protobuf")?;
                let window = aggregate.window.context("an aggregate without its window")?;
                Result1 { start_ms: window.start_ns / 1_000_000, count: window.count, sum: window.sum }
            }
            Engine::Kstreams | Engine::Quix => {
                let json: serde_json::Value = serde_json::from_slice(payload).context("a result that is not JSON")?;
                let field = |name: &str| json.get(name).with_context(|| format!("a result without {name}: {json}"));
                Result1 {
                    start_ms: field("start_ms")?.as_i64().context("start_ms")?,
                    count: field("count")?.as_u64().context("count")?,
                    sum: field("sum")?.as_f64().context("sum")?,
                }
            }
        };
        seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((key, result, at));
    }
    Ok(())
}

/// Loads `points` over `series` (value `i + s` for series `i` at second `s`), then one point a minute
/// later on every partition; returns the loaded points' event-time start.
pub(crate) fn load_input(kafka: &KafkaSettings, topic: &TopicSettings, points: u64, series: u64) -> anyhow::Result<i64> {
    let producer: BaseProducer = kafka.producer("bench-peers-load").set("linger.ms", "20").create()?;
    let base = (now_ns() - 3600 * S) / WINDOW_NS * WINDOW_NS;
    let seconds = points / series;
    for s in 0..seconds {
        for i in 0..series {
            let point = point("bench", "series", i, base + i64::try_from(s)? * S, (i + s) as f64);
            send(&producer, &topic.name, point.series_key().as_bytes(), &point.encode_to_vec())?;
        }
        producer.poll(Duration::ZERO);
    }
    // Room in the queue for the sentinels, which go to partitions of their own choosing.
    producer.flush(Duration::from_secs(120))?;
    sentinels(&producer, topic, base + i64::try_from(seconds)? * S + 60 * S)?;
    producer.flush(Duration::from_secs(120))?;
    Ok(base)
}

fn point(metric: &str, tag: &str, i: u64, timestamp_ns: i64, value: f64) -> Point {
    Point { metric: metric.to_owned(), tags: [(tag.to_owned(), i.to_string())].into(), timestamp_ns, value }
}

/// A point at `timestamp_ns` on every partition of `topic`: every engine's stream time is per
/// partition, so each needs one to close its last windows. Their own windows never close; results of
/// metric `flush` are not counted.
fn sentinels(producer: &BaseProducer, topic: &TopicSettings, timestamp_ns: i64) -> anyhow::Result<()> {
    for p in 0..topic.partitions {
        let point = point("flush", "p", u64::try_from(p)?, timestamp_ns, 0.0);
        let (key, payload) = (point.series_key(), point.encode_to_vec());
        producer.send(BaseRecord::to(&topic.name).key(key.as_bytes()).payload(&payload).partition(p)).map_err(|(err, _)| err)?;
    }
    Ok(())
}

/// One engine's throughput run.
struct Throughput {
    /// From readiness to the last result.
    seconds: f64,
    cpu: f64,
    /// From the first result read to the last: the steady state, past any start-up work (Kafka Streams
    /// spends seconds of CPU on each new task's first record); the points it covers are the load's
    /// share of the windows that came after the first.
    steady_points: f64,
    steady_seconds: f64,
    steady_cpu: f64,
    peak_mib: f64,
}

/// Drains the loaded `input` with `engine`; checks every result against the load.
async fn throughput(engine: Engine, kafka: &KafkaSettings, o: &Options, input: &TopicSettings, dir: &Path) -> anyhow::Result<Throughput> {
    let output = TopicSettings { name: unique("bench-peers-out"), partitions: o.partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&output]).await?;
    let seconds = o.points / o.series;
    let windows = (o.series * seconds / 10) as usize;
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let reader = {
        let (kafka, name, stop, seen) = (kafka.clone(), output.name.clone(), stop.clone(), seen.clone());
        tokio::task::spawn_blocking(move || read_results(&kafka, engine, &name, &stop, &seen))
    };
    let running = start(engine, kafka, o, input, &output, dir).await?;
    let (started, cpu) = (Instant::now(), running.process().cpu());
    let deadline = started + Duration::from_secs(900);
    let mut first = None;
    let (finished, cpu_end) = loop {
        let counted = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().filter(|(k, ..)| !k.starts_with("flush")).count();
        if counted > 0 && first.is_none() {
            first = Some((Instant::now(), running.process().cpu(), counted));
        }
        if counted >= windows {
            break (Instant::now(), running.process().cpu());
        }
        if Instant::now() > deadline || reader.is_finished() {
            stop.store(true, Ordering::Relaxed);
            bail!("{} gave {counted} of {windows} window results; see {}", engine.name(), running.process().log.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let peak_mib = running.process().memory_mib().1;
    // A moment more, so that a duplicate committed right behind the last result is caught too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.stop()?;
    stop.store(true, Ordering::Relaxed);
    reader.await??;
    let results = std::mem::take(&mut *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    check(engine, &results, o.series, seconds)?;
    // The last result counts: the reader saw it at `finished` or a poll before.
    let last = results.iter().map(|(_, _, at)| *at).max().unwrap_or(finished);
    let (first_at, first_cpu, first_count) = first.unwrap_or((started, cpu, 0));
    Ok(Throughput {
        seconds: last.duration_since(started).as_secs_f64(),
        cpu: cpu_end - cpu,
        steady_points: o.points as f64 * (windows - first_count) as f64 / windows as f64,
        steady_seconds: last.duration_since(first_at).as_secs_f64(),
        steady_cpu: cpu_end - first_cpu,
        peak_mib,
    })
}

/// Every window once, and the counts and sums those of the load: series `i` has `seconds` points, the
/// one at second `s` of value `i + s`.
fn check(engine: Engine, results: &[(String, Result1, Instant)], series: u64, seconds: u64) -> anyhow::Result<()> {
    let mut windows: HashMap<(&str, i64), Result1> = HashMap::new();
    for (key, result, _) in results.iter().filter(|(k, ..)| !k.starts_with("flush")) {
        if windows.insert((key, result.start_ms), *result).is_some() {
            bail!("{} gave the window {key} at {} twice", engine.name(), result.start_ms);
        }
    }
    let count: u64 = windows.values().map(|r| r.count).sum();
    let sum: f64 = windows.values().map(|r| r.sum).sum();
    // Integers all, below 2^53: exact in f64 whatever the order of the additions.
    let want_sum = (seconds * series * (series - 1) / 2 + series * seconds * (seconds - 1) / 2) as f64;
    let want_windows = (series * seconds / 10) as usize;
    if windows.len() != want_windows || count != series * seconds || sum != want_sum {
        bail!(
            "{} gave {} windows of {count} points summing to {sum}; the load makes {want_windows} windows of {} points summing to {want_sum}",
            engine.name(),
            windows.len(),
            series * seconds
        );
    }
    Ok(())
}

/// Runs `engine` live under a paced producer; returns each window result's latency from the moment
/// its window could close.
async fn latency(engine: Engine, kafka: &KafkaSettings, o: &Options, dir: &Path) -> anyhow::Result<Vec<Duration>> {
    let topic = |name: &str| TopicSettings { name: unique(name), partitions: o.partitions, replication_factor: 1 };
    let (input, output) = (topic("bench-peers-live"), topic("bench-peers-live-out"));
    kafka.ensure_topics(&[&input, &output]).await?;
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let reader = {
        let (kafka, name, stop, seen) = (kafka.clone(), output.name.clone(), stop.clone(), seen.clone());
        tokio::task::spawn_blocking(move || read_results(&kafka, engine, &name, &stop, &seen))
    };
    let running = start(engine, kafka, o, &input, &output, dir).await?;
    let first_ts = now_ns();
    let last_ts = {
        let (kafka, input, rate, series, duration) = (kafka.clone(), input.clone(), o.rate, o.latency_series, o.warm_up + o.latency_duration);
        tokio::task::spawn_blocking(move || paced(&kafka, &input, rate, series, duration)).await??
    };
    let measured_from = first_ts + i64::try_from(o.warm_up.as_nanos())?;
    // Results of windows the paced points closed, given a few seconds to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop()?;
    stop.store(true, Ordering::Relaxed);
    reader.await??;
    let grace_ns = i64::try_from(o.grace.as_nanos())?;
    // Each result's read moment on the event-time (wall) clock: now minus how long ago it was read.
    let (now_wall, now_mono) = (now_ns(), Instant::now());
    let results = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(results
        .iter()
        .filter(|(key, r, _)| {
            let close = r.start_ms * 1_000_000 + WINDOW_NS + grace_ns;
            !key.starts_with("flush") && close >= measured_from && close <= last_ts
        })
        .map(|(_, r, at)| {
            let read_ns = now_wall - i64::try_from(now_mono.duration_since(*at).as_nanos()).unwrap_or(0);
            let close = r.start_ms * 1_000_000 + WINDOW_NS + grace_ns;
            Duration::from_nanos(u64::try_from(read_ns - close).unwrap_or(0))
        })
        .collect())
}

/// Sends `rate` points a second over `series`, event time the wall clock, every 10 ms, for `duration`;
/// returns the last event time sent.
fn paced(kafka: &KafkaSettings, input: &TopicSettings, rate: f64, series: u64, duration: Duration) -> anyhow::Result<i64> {
    let producer: BaseProducer = kafka.producer("bench-peers-paced").create()?;
    let (start, tick) = (Instant::now(), Duration::from_millis(10));
    let (mut sent, mut k, mut last) = (0u64, 0u64, 0i64);
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let now = now_ns();
        while sent < due {
            let i = k % series;
            let point = point("bench", "series", i, now, (k % 100) as f64);
            send(&producer, &input.name, point.series_key().as_bytes(), &point.encode_to_vec())?;
            (sent, k, last) = (sent + 1, k + 1, now);
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(tick);
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(last)
}

pub(crate) async fn peers_bench(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    if o.series == 0 || !o.points.is_multiple_of(o.series * 10) {
        bail!("--points must be a multiple of ten times --series (whole windows)");
    }
    let dir = std::env::temp_dir().join(unique("runnel-bench-peers"));
    std::fs::create_dir_all(&dir)?;
    let input = TopicSettings { name: unique("bench-peers-in"), partitions: o.partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&input]).await?;
    {
        let (kafka, input, points, series) = (kafka.clone(), input.clone(), o.points, o.series);
        tokio::task::spawn_blocking(move || load_input(&kafka, &input, points, series)).await??;
    }
    let mut runs = Vec::new();
    for &engine in &o.engines {
        let run = throughput(engine, kafka, o, &input, &dir).await?;
        eprintln!("{}: {:.0} points/s, {:.1} CPU s", engine.name(), o.points as f64 / run.seconds, run.cpu);
        let latencies = latency(engine, kafka, o, &dir).await?;
        eprintln!("{}: window result p99 {:.0} ms over {} windows", engine.name(), quantile_ms(&latencies, 0.99), latencies.len());
        runs.push((engine, run, latencies));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(write_up(o, &runs))
}

fn write_up(o: &Options, runs: &[(Engine, Throughput, Vec<Duration>)]) -> String {
    let mut out = format!(
        "{}\n\nThe job: per series, 10 s tumbling windows of count, sum, mean, min and max in event time, a grace (allowed \
         lateness) of {} ms, final results only, exactly once, commits every 100 ms; each engine a process of its own, one \
         after the other. Runnel's processor computes more per window than the peers (standard deviation, gradient, first \
         and last, and a DDSketch for its quantiles); the peers compute the five. Kafka Streams runs {} stream threads \
         (`exactly_once_v2`, `EmitStrategy.onWindowClose`); Quix Streams `exactly-once`, `.final()` closing by partition.\n\n\
         Throughput: {} points over {} series (one point per series per second of event time, an hour ago), {} partitions, \
         then a point a minute later on every partition so that every window closes; each engine drains the topic from its \
         readiness (its group assigned) to its last window result readable by a `read_committed` consumer. Every result is \
         checked: each window once, and {} windows whose counts and sums add up exactly to the load's. CPU is the engine \
         process's (user and system, every thread, from /proc).\n\n\
         | engine | points/s | Runnel's ratio | CPU s | points per CPU second | Runnel's ratio | steady points/s | Runnel's ratio | steady points per CPU second | Runnel's ratio | peak resident MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        crate::machine(),
        o.grace.as_millis(),
        o.threads,
        o.points,
        o.series,
        o.partitions,
        o.series * (o.points / o.series) / 10,
    );
    let runnel = runs.iter().find(|(e, ..)| *e == Engine::Runnel);
    let figures: [fn(&Throughput, u64) -> f64; 4] = [
        |t, points| points as f64 / t.seconds,
        |t, points| points as f64 / t.cpu,
        |t, _| t.steady_points / t.steady_seconds,
        |t, _| t.steady_points / t.steady_cpu,
    ];
    for (engine, t, _) in runs {
        out.push_str(&format!("| {} |", engine.name()));
        for (i, figure) in figures.iter().enumerate() {
            let ratio = runnel.map_or(String::new(), |(_, r, _)| format!("{:.2}", figure(r, o.points) / figure(t, o.points)));
            out.push_str(&format!(" {:.0} | {ratio} |", figure(t, o.points)));
            if i == 0 {
                out.push_str(&format!(" {:.1} |", t.cpu));
            }
        }
        out.push_str(&format!(" {:.0} |\n", t.peak_mib));
    }
    if let (Some((_, r, _)), Some((_, k, _))) = (runnel, runs.iter().find(|(e, ..)| *e == Engine::Kstreams)) {
        let (ratio, steady) = (figures[1](r, o.points) / figures[1](k, o.points), figures[3](r, o.points) / figures[3](k, o.points));
        out.push_str(&format!(
            "\nTarget: ahead of Kafka Streams per CPU second: {} ({ratio:.2} from readiness, {steady:.2} steady).\n",
            if ratio > 1.0 && steady > 1.0 { "met" } else { "not met" }
        ));
    }
    out.push_str(
        "\nSteady: from the first window result read to the last, counting the load's share of the windows that came \
         after the first; it leaves out each engine's start-up work (Kafka Streams' first record of each new task walks \
         its window store's segments from the epoch, seconds of CPU).\n",
    );
    out.push_str(&format!(
        "\nWindow-result latency: each engine live on a fresh topic, {:.0} points a second over {} series for {} s (after {} s \
         of warm-up whose windows do not count) from a producer whose event time is the wall clock; from the moment a \
         window may close (its end plus the grace) to its result being read (`read_committed`), over every window that \
         closed in the run.\n\n\
         | engine | windows | p50 ms | p99 ms | p99.9 ms | Runnel's p99 as a ratio |\n|---|---|---|---|---|---|\n",
        o.rate,
        o.latency_series,
        o.latency_duration.as_secs(),
        o.warm_up.as_secs()
    ));
    let runnel_p99 = runnel.map(|(_, _, l)| quantile_ms(l, 0.99));
    for (engine, _, latencies) in runs {
        let p99 = quantile_ms(latencies, 0.99);
        out.push_str(&format!(
            "| {} | {} | {:.0} | {p99:.0} | {:.0} | {} |\n",
            engine.name(),
            latencies.len(),
            quantile_ms(latencies, 0.5),
            quantile_ms(latencies, 0.999),
            runnel_p99.map_or(String::new(), |r| format!("{:.2}", r / p99))
        ));
    }
    out
}
