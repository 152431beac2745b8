//! `runnel-bench store`: the store's ingest (of aggregates, and of raw points) beside a bare rdkafka
//! consumer draining the same topic; its
//! Parquet encoding beside pyarrow writing the same batch with the same codec; and the latency of a
//! dashboard `Range` and a `Sql` group-by as the stored series grow from 1,000 to 100,000.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plumbing::kafka::{KafkaSettings, TopicSettings};
use processor::aggregate::{Accumulator, SketchSpec};
use proto::prost::Message as _;
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::{Aggregate, RangeRequest, Series, SeriesSelector, Statistic};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseProducer, Producer as _};
use store::Kind;
use store::manifest::Manifest;
use store::objects::Objects;
use store::segment::{Located, aggregates_to_batch, encode_segment, to_parquet};

use crate::{S, machine, now_ns, send, unique};

const WINDOW: i64 = 10 * S;

/// Series `i` of a store of many: metric `m<i / 1000>`, tag `host=h<i % 1000>`, so that one metric holds
/// the thousand series of one dashboard.
fn series(i: u64) -> Series {
    Series { metric: format!("m{}", i / 1000), tags: [("host".to_owned(), format!("h{}", i % 1000))].into() }
}

/// The window `[start, start + len)` of series `i` as the processor would close it, from `values`
/// values evenly spread over it.
fn window(i: u64, start: i64, len: i64, values: u32, spec: &SketchSpec) -> Aggregate {
    let s = series(i);
    let mut acc = Accumulator::new(s.clone(), start, spec);
    let step = len / i64::from(values);
    for j in 0..values {
        // A noisy line, different per series, with an occasional spike: quantiles that differ.
        let t = start + i64::from(j) * step;
        let noise = ((i * 7919 + u64::from(j) * 104_729 + (start / S) as u64) % 1000) as f64 / 10.0;
        let spike = if (u64::from(j) + i).is_multiple_of(97) { 500.0 } else { 0.0 };
        acc.add(t, (i % 100) as f64 + noise + spike);
    }
    Aggregate { series: Some(s), window: Some(acc.finish(start, start + len, spec)) }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) seconds: f64,
    pub(crate) records: u64,
    /// The process's CPU seconds (user and system, every thread) during the run.
    pub(crate) cpu: f64,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// CPU seconds per million records.
    fn cpu_per_million(&self) -> f64 {
        self.cpu / self.records as f64 * 1e6
    }
}

/// This process's CPU seconds so far, user and system, from Linux's accounting (/proc/self/stat, in
/// clock ticks of 1/100 s, `USER_HZ` on every Linux this runs on). The bench runs one measured thing at
/// a time, so a difference of two readings is that thing's CPU time.
pub(crate) fn cpu_seconds() -> f64 {
    crate::process::cpu_seconds("/proc/self/stat")
}

/// A store's run: until every record was read into memory (where queries see it), and until every
/// record was listed in a manifest (durable).
struct Stored {
    read: Run,
    listed: Run,
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(crate) struct Options {
    pub(crate) aggregates: u64,
    pub(crate) points: u64,
    pub(crate) partitions: i32,
    pub(crate) rounds: u32,
    pub(crate) scales: Vec<u64>,
    pub(crate) python: PathBuf,
}

pub(crate) async fn store_bench(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    let mut out = format!("{}\n\n", machine());
    out.push_str(&ingest(kafka, o).await?);
    out.push_str(&ingest_points(kafka, o).await?);
    out.push_str(&encoding(&o.python)?);
    out.push_str(&queries(kafka, o).await?);
    Ok(out)
}

/// Ingest from Kafka into Parquet, beside a bare consumer draining the same topic.
async fn ingest(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    let topic = TopicSettings { name: unique("bench-aggregates"), partitions: o.partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&topic]).await?;
    let per_series = 100u64;
    let series_count = (o.aggregates / per_series).max(1);
    let loaded = {
        let (kafka, name) = (kafka.clone(), topic.name.clone());
        tokio::task::spawn_blocking(move || load(&kafka, &name, series_count, per_series)).await??
    };
    eprintln!("loaded {loaded} aggregates");
    let (mut bare, mut stored, mut read, mut untiered) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let run = {
            let (kafka, name) = (kafka.clone(), topic.name.clone());
            tokio::task::spawn_blocking(move || drain(&kafka, &name, loaded)).await??
        };
        eprintln!("round {round}: bare consumer {:.0} records/s", run.rate());
        bare.push(run);
        let run = run_store(kafka, Kind::Aggregates, &topic, loaded, true).await?;
        eprintln!("round {round}: store {:.0} records/s ({:.0} read)", run.listed.rate(), run.read.rate());
        stored.push(run.listed);
        read.push(run.read);
        let run = run_store(kafka, Kind::Aggregates, &topic, loaded, false).await?;
        eprintln!("round {round}: store without tiers {:.0} records/s", run.listed.rate());
        untiered.push(run.listed);
    }
    let b = median(bare.iter().map(Run::rate).collect());
    let upkeep = UPKEEP;
    Ok(format!(
        "### Ingest\n\n{loaded} aggregates ({series_count} series × {per_series} windows of 10 values, each with its \
         DDSketch, as the processor emits them), {} partitions. Each round a bare rdkafka consumer (fresh group, \
         `read_committed`, counting messages) drains the topic, then a store (fresh group and folder, default \
         settings: 1 s flushes, zstd Parquet, the 1 m and 1 h tiers, but upkeep every {upkeep:?} rather than 10 s so \
         that roll-ups and compactions run during the measurement as they do in a long run) ingests it; both timed from subscribing to the last record consumed \
         (the bare consumer) or listed in a manifest (the store; the last records wait for the next 1 s flush, then \
         their encoding). The store's time until it had read every record into memory, where queries already see \
         it, is shown too. CPU is the process's user and system time over the run (Linux's accounting), per \
         million records. Median of {} rounds.\n\n{}{}{}{}{}\n{}\n\n",
        o.partitions,
        o.rounds,
        HEADER,
        row("bare rdkafka consumer (baseline)", &bare, b),
        row("store: consumed, encoded, written, listed", &stored, b),
        row("store: read into memory (queryable)", &read, b),
        row("store without tiers (no roll-ups beside the flushes), listed", &untiered, b),
        ceiling(&stored, b),
    ))
}

pub(crate) const HEADER: &str = "| run | records/s (median) | every round | ratio | CPU s per million (median) | cores busy |\n|---|---|---|---|---|---|\n";

/// A table row: the median rate of `runs`, every round's, the ratio to `baseline`, and the CPU cost.
pub(crate) fn row(name: &str, runs: &[Run], baseline: f64) -> String {
    let rate = median(runs.iter().map(Run::rate).collect());
    let all = runs.iter().map(|r| format!("{:.0}", r.rate())).collect::<Vec<_>>().join(", ");
    let cpu = median(runs.iter().map(Run::cpu_per_million).collect());
    let cores = median(runs.iter().map(|r| r.cpu / r.seconds).collect());
    let (cpu, cores) = if cpu.is_nan() { ("".to_owned(), "".to_owned()) } else { (format!("{cpu:.2}"), format!("{cores:.2}")) };
    format!("| {name} | {rate:.0} | {all} | {:.2} | {cpu} | {cores} |\n", rate / baseline)
}

/// What the store's CPU cost per record allows on this machine: every core busy with nothing else.
fn ceiling(stored: &[Run], baseline: f64) -> String {
    let cpu = median(stored.iter().map(Run::cpu_per_million).collect());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let most = cores / cpu * 1e6;
    format!(
        "At {cpu:.2} CPU s per million records, the store could list at most {most:.0} records/s on this machine's \
         {cores} cores with every core busy ({:.2} of the bare consumer).",
        most / baseline
    )
}

/// Ingest of raw points from Kafka into Parquet, beside a bare consumer draining the same topic.
async fn ingest_points(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    let topic = TopicSettings { name: unique("bench-points"), partitions: o.partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&topic]).await?;
    let series_count = 10_000u64.min(o.points.max(1));
    let loaded = {
        let (kafka, name, points) = (kafka.clone(), topic.name.clone(), o.points);
        tokio::task::spawn_blocking(move || crate::load(&kafka, &name, points, series_count)).await??
    };
    eprintln!("loaded {loaded} points");
    let (mut bare, mut stored, mut read) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let run = {
            let (kafka, name) = (kafka.clone(), topic.name.clone());
            tokio::task::spawn_blocking(move || drain(&kafka, &name, loaded)).await??
        };
        eprintln!("round {round}: bare consumer {:.0} points/s", run.rate());
        bare.push(run);
        let run = run_store(kafka, Kind::Points, &topic, loaded, true).await?;
        eprintln!("round {round}: store {:.0} points/s ({:.0} read)", run.listed.rate(), run.read.rate());
        stored.push(run.listed);
        read.push(run.read);
    }
    let b = median(bare.iter().map(Run::rate).collect());
    Ok(format!(
        "### Ingest of raw points\n\n{loaded} points ({series_count} series, one point a second each), {} \
         partitions, timed as above. Median of {} rounds.\n\n{}{}{}{}\n{}\n\n",
        o.partitions,
        o.rounds,
        HEADER.replace("records/s", "points/s"),
        row("bare rdkafka consumer (baseline)", &bare, b),
        row("store: consumed, encoded, written, listed", &stored, b),
        row("store: read into memory (queryable)", &read, b),
        ceiling(&stored, b),
    ))
}

/// Writes `series × per_series` aggregates, window by window, keyed by series.
pub(crate) fn load(kafka: &KafkaSettings, topic: &str, series_count: u64, per_series: u64) -> anyhow::Result<u64> {
    let producer: BaseProducer = kafka.producer("bench-load").set("linger.ms", "20").create()?;
    let spec = SketchSpec::default();
    let base = (now_ns() - 3 * 3600 * S) / WINDOW * WINDOW;
    let mut sent = 0;
    for k in 0..per_series {
        for i in 0..series_count {
            let aggregate = window(i, base + i64::try_from(k)? * WINDOW, WINDOW, 10, &spec);
            let key = aggregate.series.as_ref().map(Series::key).unwrap_or_default();
            send(&producer, topic, key.as_bytes(), &aggregate.encode_to_vec())?;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(sent)
}

/// The baseline: a bare consumer that counts the topic's records.
pub(crate) fn drain(kafka: &KafkaSettings, topic: &str, records: u64) -> anyhow::Result<Run> {
    let consumer: BaseConsumer = kafka.consumer("bench-drain", &unique("bench-drain")).create()?;
    let (started, cpu) = (Instant::now(), cpu_seconds());
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    while seen < records {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the bare consumer read {seen} of {records} records in 10 minutes");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message?;
            seen += 1;
        }
    }
    Ok(Run { seconds: started.elapsed().as_secs_f64(), records: seen, cpu: cpu_seconds() - cpu })
}

/// How often the measured stores run their upkeep.
const UPKEEP: Duration = Duration::from_secs(2);

// Settings read better assigned one by one.
#[allow(clippy::field_reassign_with_default)]
async fn run_store(kafka: &KafkaSettings, kind: Kind, topic: &TopicSettings, records: u64, tiers: bool) -> anyhow::Result<Stored> {
    let dir = std::env::temp_dir().join(unique("bench-store"));
    let mut s = store::Settings::default();
    s.kafka = kafka.clone();
    s.grpc.listen = "127.0.0.1:0".parse()?;
    s.ops.listen = "127.0.0.1:0".parse()?;
    s.group_id = unique("bench-store");
    quiet_topics(&mut s);
    match kind {
        Kind::Points => s.topics.points = topic.clone(),
        Kind::Aggregates => s.topics.aggregates = topic.clone(),
        Kind::Alerts => s.topics.alerts = topic.clone(),
    }
    s.storage.path = dir.clone();
    // Upkeep (roll-ups, compaction) every 2 s rather than 10: a run lasts seconds, and a long one does
    // the same upkeep work per record.
    s.storage.maintenance_interval = UPKEEP;
    if !tiers {
        s.storage.tiers.clear();
    }
    let app = store::App::build(s).await?;
    let stats = app.stats(kind);
    let shutdown = plumbing::Shutdown::new();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let task = tokio::spawn(app.run(shutdown.clone()));
    let mut all_read = None;
    while stats.rows.load(Ordering::SeqCst) < records {
        if all_read.is_none() && stats.read.load(Ordering::Relaxed) >= records {
            all_read = Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(600) || task.is_finished() {
            bail!("the store listed {} of {records} records", stats.rows.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    shutdown.cancel();
    task.await??;
    let _ = std::fs::remove_dir_all(&dir);
    // Read at the latest when listed (the counter is published every few hundred messages).
    let read = Run { seconds: all_read.unwrap_or(seconds), records, cpu: f64::NAN };
    Ok(Stored { listed: Run { seconds, records, cpu }, read })
}

/// Every table from a topic of its own, empty: the store measured reads only the topic it is given.
fn quiet_topics(s: &mut store::Settings) {
    s.topics.points = TopicSettings::new(&unique("bench-points"));
    s.topics.aggregates = TopicSettings::new(&unique("bench-aggregates"));
    s.topics.alerts = TopicSettings::new(&unique("bench-alerts"));
}

/// Parquet encoding of one batch of aggregates, beside pyarrow writing the same batch, same codec.
fn encoding(python: &Path) -> anyhow::Result<String> {
    let rows = 500_000u64;
    let spec = SketchSpec::default();
    let base = (now_ns() - 3 * 3600 * S) / WINDOW * WINDOW;
    let located: Vec<Located> = (0..rows)
        .map(|r| Located { partition: 0, offset: r as i64, aggregate: window(r % 10_000, base + (r / 10_000) as i64 * WINDOW, WINDOW, 10, &spec) })
        .collect();
    let batch = aggregates_to_batch(&located)?;
    let ipc = std::env::temp_dir().join(unique("bench-batch")).with_extension("arrow");
    {
        let mut writer = arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(&ipc)?, &batch.schema())?;
        writer.write(&batch)?;
        writer.finish()?;
    }
    let (mut ours, mut whole, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    for _ in 0..5 {
        let started = Instant::now();
        let bytes = to_parquet(&batch)?;
        ours.push(rows as f64 / started.elapsed().as_secs_f64());
        sizes.0 = bytes.len();
        let started = Instant::now();
        let bytes = to_parquet(&aggregates_to_batch(&located)?)?;
        whole.push(rows as f64 / started.elapsed().as_secs_f64());
        drop(bytes);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pyarrow_encode.py");
    let output = std::process::Command::new(python).arg(&script).arg(&ipc).arg("5").output().context("running pyarrow")?;
    let _ = std::fs::remove_file(&ipc);
    if !output.status.success() {
        bail!("pyarrow failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout)?;
    let mut version = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("version ") {
            version = v.to_owned();
        } else if let Some(size) = line.strip_prefix("bytes ") {
            sizes.1 = size.parse()?;
        } else if let Some(secs) = line.strip_prefix("seconds ") {
            theirs.push(rows as f64 / secs.parse::<f64>()?);
        }
    }
    let (ours, whole, theirs) = (median(ours), median(whole), median(theirs));
    Ok(format!(
        "### Parquet encoding\n\nOne batch of {rows} aggregates (all {} columns, sketches included) written as one \
         zstd (level 3) row group, in memory; median of 5. pyarrow {version} reads the same batch from an Arrow IPC \
         file first (not timed) and writes it with `pq.write_table(compression=\"zstd\", compression_level=3, \
         row_group_size=rows)`; both may use a dictionary for every column.\n\n\
         | encoder | rows/s (median) | bytes | ratio |\n|---|---|---|---|\n\
         | pyarrow (baseline) | {theirs:.0} | {} | 1.00 |\n\
         | Runnel `to_parquet` (the arrow-rs writer) | {ours:.0} | {} | {:.2} |\n\
         | Runnel rows to Arrow columns to Parquet (building the columns too) | {whole:.0} | | {:.2} |\n\n",
        batch.num_columns(),
        sizes.1,
        sizes.0,
        ours / theirs,
        whole / theirs
    ))
}

/// Query latency as the stored series grow.
async fn queries(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    let mut out = String::from(
        "### Query latency\n\nFor each scale, a store folder is written directly (not through Kafka): the 1-minute \
         tier for one hour (each row merging 60 values) and the 1-hour tier for one day (each row merging 60 \
         values), every series of metric `m<k>` holding 1,000 hosts, in segments of at most 250,000 rows over \
         4 partitions. A store then serves it (`storage.cache_bytes` 8 GiB). The dashboard `Range` asks one \
         metric's 1,000 series over the hour at a 1-minute step, p99 of their values (answered from the \
         1-minute tier); the `Sql` query groups a day of the 1-hour tier by metric. First call (cold: segments \
         read from disk and decoded) and median of 5 more (warm).\n\n\
         | series stored | rows (1 m + 1 h tiers) | write s | `Range` cold ms | `Range` warm ms | `Sql` cold ms | `Sql` warm ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for &scale in &o.scales {
        let row = query_scale(kafka, scale).await?;
        eprintln!("{scale} series: {row}");
        out.push_str(&row);
    }
    out.push('\n');
    Ok(out)
}

// Settings read better assigned one by one.
#[allow(clippy::field_reassign_with_default)]
async fn query_scale(kafka: &KafkaSettings, scale: u64) -> anyhow::Result<String> {
    const PARTITIONS: i32 = 4;
    let dir = std::env::temp_dir().join(unique("bench-queries"));
    let topic = TopicSettings { name: unique("bench-queries"), partitions: PARTITIONS, replication_factor: 1 };
    kafka.ensure_topics(&[&topic]).await?;
    let hour_start = (now_ns() - 2 * 3600 * S) / (3600 * S) * (3600 * S);
    let day_start = hour_start - 23 * 3600 * S;
    let started = Instant::now();
    let rows = {
        let (dir, name) = (dir.clone(), topic.name.clone());
        tokio::task::spawn_blocking(move || write_tiers(&dir, &name, scale, PARTITIONS, hour_start, day_start)).await??
    };
    let write_seconds = started.elapsed().as_secs_f64();

    let mut s = store::Settings::default();
    s.kafka = kafka.clone();
    s.grpc.listen = "127.0.0.1:0".parse()?;
    s.ops.listen = "127.0.0.1:0".parse()?;
    s.group_id = unique("bench-queries");
    quiet_topics(&mut s);
    s.topics.aggregates = topic.clone();
    s.storage.path = dir.clone();
    s.storage.cache_bytes = 8 << 30;
    s.query.max_response_bytes = 256 << 20;
    let app = store::App::build(s).await?;
    let addr = app.grpc_addr();
    let shutdown = plumbing::Shutdown::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await?.max_decoding_message_size(256 << 20);

    let range = RangeRequest {
        selector: Some(SeriesSelector { metric: "m0".into(), matchers: vec![] }),
        start_ns: hour_start,
        end_ns: hour_start + 3600 * S,
        step_ns: 60 * S,
        statistic: Statistic::Quantile as i32,
        quantile: 0.99,
    };
    let sql = format!(
        "SELECT metric, avg(mean) AS mean, max(max) AS top, sum(\"count\") AS points FROM aggregates_1h \
         WHERE start_ns >= {day_start} AND start_ns < {} GROUP BY metric ORDER BY metric",
        day_start + 24 * 3600 * S
    );
    let mut range_ms = Vec::new();
    let mut sql_ms = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let reply = client.range(range.clone()).await?.into_inner();
        range_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let samples: usize = reply.series.iter().map(|s| s.samples.len()).sum();
        if reply.series.len() != 1000 || samples != 60_000 {
            bail!("the dashboard query answered {} series, {samples} samples", reply.series.len());
        }
        let started = Instant::now();
        let metrics = sql_rows(&mut client, &sql).await?;
        sql_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if metrics != (scale / 1000) as usize {
            bail!("the group-by answered {metrics} metrics");
        }
    }
    shutdown.cancel();
    task.await??;
    let _ = std::fs::remove_dir_all(&dir);
    let (range_cold, sql_cold) = (range_ms[0], sql_ms[0]);
    Ok(format!(
        "| {scale} | {rows} | {write_seconds:.1} | {range_cold:.0} | {:.0} | {sql_cold:.0} | {:.0} |\n",
        median(range_ms[1..].to_vec()),
        median(sql_ms[1..].to_vec())
    ))
}

/// The rows a `Sql` answer holds.
async fn sql_rows(client: &mut QueryServiceClient<proto::tonic::transport::Channel>, query: &str) -> anyhow::Result<usize> {
    Ok(store::client::sql(client, query).await?.iter().map(arrow::array::RecordBatch::num_rows).sum())
}

/// Writes the 1-minute tier of one hour and the 1-hour tier of one day for `scale` series, with their
/// manifests, as the store's upkeep would have; returns the rows written.
fn write_tiers(dir: &Path, topic: &str, scale: u64, partitions: i32, hour_start: i64, day_start: i64) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let objects = Objects::local(dir)?;
    let spec = SketchSpec::default();
    let mut total = 0;
    for (step, steps, start) in [(60 * S, 60, hour_start), (3600 * S, 24, day_start)] {
        let kind = store::tier_name("aggregates", Duration::from_nanos(step as u64));
        for partition in 0..partitions {
            let mut manifest = Manifest::default();
            let mut offset = 0i64;
            let mut chunk: Vec<Located> = Vec::new();
            let flush = |chunk: &mut Vec<Located>, offset: &mut i64, manifest: &mut Manifest| -> anyhow::Result<()> {
                if chunk.is_empty() {
                    return Ok(());
                }
                let first = *offset;
                *offset += chunk.len() as i64;
                let name = store::segment::segment_name(&kind, topic, partition, first, *offset);
                let (bytes, meta) = encode_segment(&aggregates_to_batch(chunk)?, "start_ns", name, first, *offset)?;
                runtime.block_on(objects.put_segment(&meta.name, bytes))?;
                manifest.append(meta)?;
                chunk.clear();
                Ok(())
            };
            for i in (0..scale).filter(|i| (*i % partitions as u64) as i32 == partition) {
                for k in 0..steps {
                    let aggregate = window(i, start + k * step, step, 60, &spec);
                    chunk.push(Located { partition, offset: offset + chunk.len() as i64, aggregate });
                    total += 1;
                }
                if chunk.len() >= 250_000 {
                    flush(&mut chunk, &mut offset, &mut manifest)?;
                }
            }
            flush(&mut chunk, &mut offset, &mut manifest)?;
            runtime.block_on(objects.publish_manifest(&kind, topic, partition, &manifest))?;
        }
    }
    Ok(total)
}

/// The interpreter `deploy/bench.sh` prepared with pyarrow, or `python3`.
pub(crate) fn default_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}
