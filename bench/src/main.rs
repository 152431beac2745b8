//! `runnel-bench`: measures Runnel beside baselines run in the same process, on the same broker and the
//! same data, and reports ratios (this machine is noisy; only ratios between runs side by side hold).
//!
//! `runnel-bench processor` loads a points topic once, then runs, in alternating rounds, the processor
//! exactly once, the processor at least once, and a bare rdkafka transactional consume-then-produce
//! passthrough over the same input, and measures their throughput and how long a closed window takes
//! to become visible to a `read_committed` reader.

mod analyzer;
mod load;
mod peers;
mod pipeline;
mod process;
mod scaling;
mod collector;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::prost::Message as _;
use proto::v1::Point;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Parser)]
#[command(name = "runnel-bench", about = "Runnel's benchmarks, each beside its baseline")]
struct Cli {
    /// Kafka brokers (the suite script starts one and sets this).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The folder of the service binaries the pipeline and peer benchmarks run; by default the one
    /// runnel-bench runs from (deploy/bench.sh builds them there).
    #[arg(long, env = "RUNNEL_BENCH_BIN_DIR")]
    bin_dir: Option<std::path::PathBuf>,
    /// Where the report goes; the section of each benchmark is replaced, the rest kept.
    #[arg(long, default_value = "BENCHMARKS.md")]
    report: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The load generator alone: points to a running collector at a rate (or as fast as it takes them),
    /// then the rate it acknowledged and the requests' latency.
    Load {
        /// The collector's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        grpc: String,
        /// The collector's HTTP address (line protocol).
        #[arg(long, default_value = "http://127.0.0.1:8086")]
        http: String,
        #[command(flatten)]
        spec: load::Spec,
    },
    /// The whole pipeline as processes under the load generator: the maximum rate beside a bare
    /// producer, latency from a window's close to its aggregate being queryable and its alert being
    /// watched, CPU and memory per service, and draining the points topic beside a bare consumer and
    /// a bare transactional passthrough.
    Pipeline {
        /// The load; its `--rate` is ignored (the first run goes as fast as it can, the later ones at
        /// `--fractions` of that) and its `--duration` is the first run's.
        #[command(flatten)]
        spec: load::Spec,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Fractions of the sustained rate for the latency runs.
        #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
        fractions: Vec<f64>,
        /// How long each latency run lasts.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        latency_duration: Duration,
        /// Probe series under the alert rule.
        #[arg(long, default_value_t = 200)]
        probes: u64,
        /// A setting for the services beyond the defaults, as an environment variable
        /// (`RUNNEL_PROCESSOR__COMMIT_INTERVAL=500ms`); repeatable. The report names each.
        #[arg(long = "env", value_name = "NAME=VALUE", value_parser = service_env)]
        env: Vec<(String, String)>,
    },
    /// The processor's job (10 s tumbling windows, exactly once) beside Kafka Streams and Quix Streams
    /// on the same topic and data: throughput, CPU, memory and window-result latency.
    Peers {
        #[arg(long, default_value_t = 1_000_000)]
        points: u64,
        #[arg(long, default_value_t = 10_000)]
        series: u64,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Every engine's grace (Runnel's allowed lateness).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// The latency runs' paced rate (points a second), time and series.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        latency_duration: Duration,
        #[arg(long, default_value_t = 1_000)]
        latency_series: u64,
        /// The latency runs' warm-up, whose windows do not count.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        warm_up: Duration,
        /// Kafka Streams' stream threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The peers' folder (bench/peers/setup.sh builds the jar and the virtualenv there).
        #[arg(long, default_value = "bench/peers")]
        peers: std::path::PathBuf,
        #[arg(long, value_enum, value_delimiter = ',', default_value = "runnel,kstreams,quix")]
        engines: Vec<peers::Engine>,
    },
    /// The processor's throughput, CPU per point and memory from 1,000 to 1,000,000 series, and with 1, 2
    /// and 4 instances on the same partitions.
    Scaling {
        /// Points of every configuration (a multiple of every series count).
        #[arg(long, default_value_t = 2_000_000)]
        points: u64,
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000,1000000")]
        scales: Vec<u64>,
        /// Series of the instances' runs.
        #[arg(long, default_value_t = 10_000)]
        series: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        instances: Vec<usize>,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// The standard suite: pipeline, peers and scaling, each with its defaults (about 12 minutes here);
    /// `--short` runs each small (under 2 minutes), to check that the suite works, as CI does.
    Suite {
        #[arg(long)]
        short: bool,
    },
    /// Processor throughput exactly once, at least once and as a bare transactional passthrough; and the
    /// latency from a window's close to its visibility.
    Processor {
        /// Points in the input topic.
        #[arg(long, default_value_t = 1_000_000)]
        points: u64,
        /// Series they spread over (one point per series per second of event time).
        #[arg(long, default_value_t = 10_000)]
        series: u64,
        /// Rounds of the three runs, alternated so that drift hits all alike.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Input partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Analyzer: the cost of a model update and memory per series, aggregates per second per core beside a
    /// bare consumer, and the detectors' NAB score on the sample in ../shared/data/nab.
    Analyzer {
        /// Series counts for the update cost and memory.
        #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
        scales: Vec<u64>,
        /// Aggregates through a running analyzer.
        #[arg(long, default_value_t = 1_000_000)]
        aggregates: u64,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// NAB's sample: labels.json and data/.
        #[arg(long, default_value = "../shared/data/nab")]
        nab: std::path::PathBuf,
    },
    /// Collector: points per second accepted through gRPC batches, gRPC streaming and HTTP line
    /// protocol, beside a bare rdkafka producer sending the same points.
    Collector {
        #[arg(long, default_value_t = 1_000_000)]
        points: u64,
        #[arg(long, default_value_t = 10_000)]
        series: u64,
        /// Points per request (and per streamed message).
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Store ingest beside a bare consumer, Parquet encoding beside pyarrow, and query latency from 1,000
    /// to 100,000 series.
    Store {
        /// Aggregates in the ingest topic: enough that the last flush (up to 1 s) is a small part.
        #[arg(long, default_value_t = 3_000_000)]
        aggregates: u64,
        /// Raw points in the points ingest topic (over 10,000 series): enough that the last flush (up to
        /// 1 s) and the start are a small part.
        #[arg(long, default_value_t = 20_000_000)]
        points: u64,
        /// Its partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Ingest rounds, alternated with the baseline.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Series counts for the query latency.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        scales: Vec<u64>,
        /// A Python with pyarrow (deploy/bench.sh prepares one).
        #[arg(long)]
        python: Option<std::path::PathBuf>,
    },
}

const S: i64 = 1_000_000_000;

fn now_ns() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), now_ns())
}

/// The services' own allocator, so that what runs in this process costs what it costs in theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin_dir = match cli.bin_dir.clone() {
        Some(dir) => dir,
        None => std::env::current_exe()?.parent().context("runnel-bench has no folder")?.to_path_buf(),
    };
    process::BIN_DIR.get_or_init(|| bin_dir);
    let kafka = KafkaSettings { brokers: cli.brokers.clone(), ..KafkaSettings::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    dispatch(cli.command, &runtime, &cli.report, &kafka)
}

/// The suite's benchmarks and their arguments: the defaults, or small enough for CI.
fn suite(short: bool) -> Vec<Vec<&'static str>> {
    if short {
        vec![
            vec!["pipeline", "--duration", "5s", "--series", "1000", "--batch", "500", "--clients", "4", "--fractions", "0.5", "--latency-duration", "16s", "--probes", "20", "--progress", "false"],
            vec!["peers", "--points", "50000", "--series", "1000", "--rate", "2000", "--latency-duration", "4s", "--warm-up", "4s", "--latency-series", "100"],
            vec!["scaling", "--points", "50000", "--scales", "1000", "--series", "1000", "--instances", "1,2"],
        ]
    } else {
        vec![vec!["pipeline"], vec!["peers"], vec!["scaling"]]
    }
}

/// One benchmark's arguments, parsed as the command line would be.
#[derive(Debug, Parser)]
struct One {
    #[command(subcommand)]
    command: Command,
}

fn dispatch(command: Command, runtime: &tokio::runtime::Runtime, report: &std::path::Path, kafka: &KafkaSettings) -> anyhow::Result<()> {
    let kafka = kafka.clone();
    match command {
        Command::Load { grpc, http, spec } => {
            spec.check()?;
            let protocol = spec.protocol;
            let report = runtime.block_on(load::run(&load::Target { grpc, http }, &load::Generator::new(spec)))?;
            println!(
                "{} requests, {} points acknowledged in {:.1} s through {}: {:.0} points/s; request latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                report.requests,
                report.accepted,
                report.seconds,
                protocol.name(),
                report.rate(),
                report.latency_ms(0.5),
                report.latency_ms(0.99),
                report.latency_ms(0.999),
                report.latency_ms(1.0)
            );
        }
        Command::Pipeline { spec, partitions, fractions, latency_duration, probes, env } => {
            let settings: String = env.iter().map(|(name, value)| format!(" --env {name}={value}")).collect();
            let command = format!(
                "deploy/bench.sh pipeline --duration {} --series {} --tags {} --batch {} --clients {} --protocol {} --seed {} --partitions {partitions} --fractions {} --latency-duration {} --probes {probes}{settings}",
                humantime::format_duration(spec.duration),
                spec.series,
                spec.tags,
                spec.batch,
                spec.clients,
                clap::ValueEnum::to_possible_value(&spec.protocol).map_or_else(String::new, |v| v.get_name().to_owned()),
                spec.seed,
                fractions.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
                humantime::format_duration(latency_duration)
            );
            let options = pipeline::Options { spec, partitions, fractions, latency_duration, probes, env };
            let section = runtime.block_on(pipeline::pipeline_bench(&kafka, &options))?;
            write_section(report, "Pipeline", &format!("{section}\nReproduce: `{command}`\n"))?;
            println!("{section}");
        }
        Command::Peers { points, series, partitions, grace, rate, latency_duration, latency_series, warm_up, threads, peers, engines } => {
            let command = format!(
                "deploy/bench.sh peers --points {points} --series {series} --partitions {partitions} --grace {} --rate {rate} --latency-duration {} --latency-series {latency_series} --warm-up {} --threads {threads}",
                humantime::format_duration(grace),
                humantime::format_duration(latency_duration),
                humantime::format_duration(warm_up)
            );
            let options =
                peers::Options { points, series, partitions, grace, rate, latency_duration, latency_series, warm_up, threads, peers, engines };
            let section = runtime.block_on(peers::peers_bench(&kafka, &options))?;
            write_section(report, "Peer engines", &format!("{section}\nReproduce: `{command}`\n"))?;
            println!("{section}");
        }
        Command::Scaling { points, scales, series, instances, partitions } => {
            let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let command = format!(
                "deploy/bench.sh scaling --points {points} --scales {} --series {series} --instances {} --partitions {partitions}",
                join(&scales),
                join(&instances.iter().map(|&i| i as u64).collect::<Vec<_>>())
            );
            let options = scaling::Options { points, scales, series, instances, partitions };
            let section = runtime.block_on(scaling::scaling_bench(&kafka, &options))?;
            write_section(report, "Scaling", &format!("{section}\nReproduce: `{command}`\n"))?;
            println!("{section}");
        }
        Command::Suite { short } => {
            for args in suite(short) {
                let one = One::try_parse_from(std::iter::once("runnel-bench").chain(args))?;
                dispatch(one.command, runtime, report, &kafka)?;
            }
        }
        Command::Processor { points, series, rounds, partitions } => {
            let section = runtime.block_on(processor_bench(&kafka, points, series, rounds, partitions))?;
            let command = format!(
                "deploy/bench.sh processor --points {points} --series {series} --rounds {rounds} --partitions {partitions}"
            );
            write_section(report, "Processor", &format!("{section}\nReproduce: `{command}`\n"))?;
            println!("{section}");
        }
        Command::Analyzer { scales, aggregates, partitions, rounds, nab } => {
            let command = format!(
                "deploy/bench.sh analyzer --scales {} --aggregates {aggregates} --partitions {partitions} --rounds {rounds} --nab {}",
                scales.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                nab.display()
            );
            let options = analyzer::Options { scales, aggregates, partitions, rounds, nab };
            let section = runtime.block_on(analyzer::analyzer_bench(&kafka, &options))?;
            write_section(report, "Analyzer", &format!("{section}Reproduce: `{command}`\n"))?;
            println!("{section}");
        }
        Command::Collector { points, series, batch, clients, partitions, rounds } => {
            let command = format!(
                "deploy/bench.sh collector --points {points} --series {series} --batch {batch} --clients {clients} --partitions {partitions} --rounds {rounds}"
            );
            let options = collector::Options { points, series, batch, clients, partitions, rounds };
            let section = runtime.block_on(collector::collector_bench(&kafka, &options))?;
            write_section(report, "Collector", &format!("{section}\nReproduce: `{command}`\n"))?;
            println!("{section}");
        }
        Command::Store { aggregates, points, partitions, rounds, scales, python } => {
            let command = format!(
                "deploy/bench.sh store --aggregates {aggregates} --points {points} --partitions {partitions} --rounds {rounds} --scales {}",
                scales.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            );
            let python = python.unwrap_or_else(store::default_python);
            let options = store::Options { aggregates, points, partitions, rounds, scales, python };
            let section = runtime.block_on(store::store_bench(&kafka, &options))?;
            write_section(report, "Store", &format!("{section}Reproduce: `{command}`\n"))?;
            println!("{section}");
        }
    }
    Ok(())
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    points: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.points as f64 / self.seconds
    }
}

async fn processor_bench(kafka: &KafkaSettings, points: u64, series: u64, rounds: u32, partitions: i32) -> anyhow::Result<String> {
    if series == 0 || points < series {
        bail!("--points must be at least --series");
    }
    let input = TopicSettings { name: unique("bench-points"), partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&input]).await?;
    let load_started = Instant::now();
    let loaded = load(kafka, &input.name, points, series)?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    eprintln!("loaded {loaded} points in {load_seconds:.1} s");

    let mut exactly = Vec::new();
    let mut at_least = Vec::new();
    let mut passthrough = Vec::new();
    let mut latencies_eos = Vec::new();
    let mut latencies_alo = Vec::new();
    let mut commits = Vec::new();
    for round in 0..rounds {
        let (run, mut lat, commit) = run_processor(kafka, &input, loaded, processor::Delivery::ExactlyOnce).await?;
        eprintln!(
            "round {round}: exactly once {:.0} points/s, {:.0} transactions of {:.0} changelog records and {:.1} ms",
            run.rate(),
            commit.transactions,
            commit.records,
            commit.millis
        );
        commits.push(commit);
        exactly.push(run);
        latencies_eos.append(&mut lat);
        let (run, mut lat, _) = run_processor(kafka, &input, loaded, processor::Delivery::AtLeastOnce).await?;
        eprintln!("round {round}: at least once {:.0} points/s", run.rate());
        at_least.push(run);
        latencies_alo.append(&mut lat);
        let run = {
            let output = TopicSettings { name: unique("bench-passthrough"), ..input.clone() };
            kafka.ensure_topics(&[&output]).await?;
            let (kafka, input) = (kafka.clone(), input.clone());
            tokio::task::spawn_blocking(move || run_passthrough(&kafka, &input, &output.name, loaded)).await??
        };
        eprintln!("round {round}: passthrough {:.0} points/s", run.rate());
        passthrough.push(run);
    }

    let median = |runs: &[Run]| {
        let mut rates: Vec<f64> = runs.iter().map(Run::rate).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (eos, alo, bare) = (median(&exactly), median(&at_least), median(&passthrough));
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * q).round() as usize] }
    };
    let all = |runs: &[Run]| runs.iter().map(|r| format!("{:.0}", r.rate())).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    out.push_str(&format!(
        "{}\n\nInput: {loaded} points over {series} series (one point per series per second of event time, \
         10 s tumbling windows), {partitions} partitions, loaded once by a bare idempotent \
         rdkafka producer at {:.0} points/s. Each round runs the three consumers below over the same input, \
         each with a fresh consumer group and fresh output topics; the processors run in this process with \
         `commit_interval = 100ms`. Throughput counts from partition assignment to the last input point \
         handled. Median of {rounds} rounds.\n\n",
        machine(),
        loaded as f64 / load_seconds
    ));
    out.push_str("| run | points/s (median) | every round | ratio |\n|---|---|---|---|\n");
    out.push_str(&format!("| bare transactional passthrough (baseline) | {bare:.0} | {} | 1.00 |\n", all(&passthrough)));
    out.push_str(&format!("| processor, at least once | {alo:.0} | {} | {:.2} of passthrough |\n", all(&at_least), alo / bare));
    out.push_str(&format!(
        "| processor, exactly once | {eos:.0} | {} | {:.2} of at least once, {:.2} of passthrough |\n\n",
        all(&exactly),
        eos / alo,
        eos / bare
    ));
    out.push_str(&format!(
        "Window close to visible for a `read_committed` reader (every aggregate of every round; the close \
         time is the processor's `{}` header): exactly once p50 {:.1} ms, p99 {:.1} ms ({} windows); at \
         least once p50 {:.1} ms, p99 {:.1} ms ({} windows).\n",
        processor::CLOSED_AT_HEADER,
        pct(&mut latencies_eos, 0.5),
        pct(&mut latencies_eos, 0.99),
        latencies_eos.len(),
        pct(&mut latencies_alo, 0.5),
        pct(&mut latencies_alo, 0.99),
        latencies_alo.len()
    ));
    let mean = |f: fn(&Commits) -> f64| commits.iter().map(f).sum::<f64>() / commits.len().max(1) as f64;
    out.push_str(&format!(
        "\nExactly once, each transaction carried on average {:.0} changelog records (the state of every window \
         that changed since the last one) and took {:.1} ms from the first changelog write to the commit \
         ({:.0} transactions per round).\n",
        mean(|c| c.records),
        mean(|c| c.millis),
        mean(|c| c.transactions)
    ));
    Ok(out)
}

/// Cores, memory and CPU model, and the versions that matter.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0 / 1024.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    format!(
        "Machine: {cores} cores ({model}), {mem_gib:.0} GiB; Apache Kafka 4.4.0 single broker on 127.0.0.1 \
         (deploy/kafka.sh); librdkafka {librdkafka}; {} build; measured {}.",
        if cfg!(debug_assertions) { "debug (not representative)" } else { "release" },
        humantime_now()
    )
}

fn humantime_now() -> String {
    let secs = u64::try_from(now_ns() / S).unwrap_or(0);
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), to avoid a date crate.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes the points: series `i` has one point per second from an hour ago, value `i + s`, sent in
/// event-time order, keyed by series.
pub(crate) fn load(kafka: &KafkaSettings, topic: &str, points: u64, series: u64) -> anyhow::Result<u64> {
    let producer: BaseProducer = kafka.producer("bench-load").set("linger.ms", "20").create()?;
    let base = (now_ns() - 3600 * S) / (10 * S) * (10 * S);
    let seconds = points / series;
    let mut sent = 0;
    for s in 0..seconds {
        for i in 0..series {
            let point = Point {
                metric: "bench".to_owned(),
                tags: [("series".to_owned(), i.to_string())].into(),
                timestamp_ns: base + i64::try_from(s)? * S,
                value: (i + s) as f64,
            };
            let (key, payload) = (point.series_key(), point.encode_to_vec());
            send(&producer, topic, key.as_bytes(), &payload)?;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(sent)
}

/// Enqueues one record, waiting for room while the producer's queue is full.
pub(crate) fn send(producer: &BaseProducer, topic: &str, key: &[u8], payload: &[u8]) -> Result<(), KafkaError> {
    loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(5));
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Runs the processor over the whole input; returns its throughput and the close-to-visible latency of
/// every aggregate, in milliseconds.
// Nested settings read better assigned one by one than as one struct literal.
#[allow(clippy::field_reassign_with_default)]
async fn run_processor(
    kafka: &KafkaSettings,
    input: &TopicSettings,
    points: u64,
    delivery: processor::Delivery,
) -> anyhow::Result<(Run, Vec<f64>, Commits)> {
    let mut settings = processor::Settings::default();
    settings.ops.listen = "127.0.0.1:0".parse()?;
    settings.kafka = kafka.clone();
    settings.group_id = unique("bench-processor");
    settings.transactional_id = unique("bench-processor");
    settings.delivery = delivery;
    settings.topics.points = input.clone();
    settings.topics.aggregates = TopicSettings { name: unique("bench-aggregates"), ..input.clone() };
    settings.topics.deadletter = TopicSettings { name: unique("bench-deadletter"), ..input.clone() };
    settings.commit_interval = Duration::from_millis(100);
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let aggregates = settings.topics.aggregates.name.clone();
    let app = processor::App::build(settings).await?;
    let stats = app.stats();
    let shutdown = plumbing::Shutdown::new();
    let task = tokio::spawn(app.run(shutdown.clone()));

    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (kafka, reading) = (kafka.clone(), Arc::clone(&reading));
        tokio::task::spawn_blocking(move || visibility(&kafka, &aggregates, &reading))
    };

    let deadline = Instant::now() + Duration::from_secs(600);
    let started = loop {
        if stats.assigned_partitions.load(Ordering::SeqCst) > 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the processor was never assigned a partition");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let handled = || {
        stats.points.load(Ordering::SeqCst) + stats.late_points.load(Ordering::SeqCst) + stats.malformed.load(Ordering::SeqCst)
    };
    while handled() < points {
        if Instant::now() > deadline {
            bail!("the processor handled {} of {points} points in 10 minutes", handled());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await?.context("processor run")?;
    let transactions = stats.transactions.load(Ordering::SeqCst).max(1) as f64;
    let commits = Commits {
        transactions,
        records: stats.changelog_records.load(Ordering::SeqCst) as f64 / transactions,
        millis: stats.commit_micros.load(Ordering::SeqCst) as f64 / transactions / 1000.0,
    };
    // Give the reader time to see the last commit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    reading.store(false, Ordering::SeqCst);
    let latencies = reader.await??;
    Ok((Run { seconds, points }, latencies, commits))
}

/// What an exactly-once run's transactions carried, on average.
#[derive(Debug, Clone, Copy)]
struct Commits {
    transactions: f64,
    /// Changelog records per transaction.
    records: f64,
    /// Time per commit (changelog writes, flush, offsets, commit).
    millis: f64,
}

/// Reads `topic` with `read_committed` while `reading`, recording for each aggregate the milliseconds
/// from its window's close (the header) to its arrival here.
fn visibility(kafka: &KafkaSettings, topic: &str, reading: &AtomicBool) -> anyhow::Result<Vec<f64>> {
    let consumer: BaseConsumer = kafka.consumer("bench-visibility", &unique("bench-visibility")).create()?;
    consumer.subscribe(&[topic])?;
    let mut latencies = Vec::new();
    while reading.load(Ordering::SeqCst) {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else { continue };
        let message = message?;
        let arrived = now_ns();
        let closed = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == processor::CLOSED_AT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok())
        });
        if let Some(closed) = closed {
            latencies.push((arrived - closed) as f64 / 1e6);
        }
    }
    Ok(latencies)
}

/// The baseline: a bare rdkafka loop that reads the input and writes each message unchanged to an
/// output topic, committing the output and the input offsets in one transaction every 100 ms, like the
/// processor's exactly-once mode, with the same client settings.
fn run_passthrough(kafka: &KafkaSettings, input: &TopicSettings, output: &str, points: u64) -> anyhow::Result<Run> {
    let consumer: BaseConsumer = kafka.consumer("bench-passthrough", &unique("bench-passthrough")).create()?;
    let producer: BaseProducer =
        kafka.transactional_producer("bench-passthrough", &unique("bench-passthrough"), Duration::from_secs(10)).create()?;
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout)?;
    consumer.subscribe(&[&input.name])?;
    let mut forwarded = 0u64;
    let mut open = false;
    let mut last_commit = Instant::now();
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let commit = |producer: &BaseProducer, consumer: &BaseConsumer| -> anyhow::Result<()> {
        let positions = consumer.position()?;
        let mut offsets = TopicPartitionList::new();
        for elem in positions.elements() {
            if let Offset::Offset(at) = elem.offset() {
                offsets.add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(at))?;
            }
        }
        let group = consumer.group_metadata().context("group metadata")?;
        producer.send_offsets_to_transaction(&offsets, &group, timeout)?;
        producer.commit_transaction(timeout)?;
        Ok(())
    };
    while forwarded < points {
        if Instant::now() > deadline {
            bail!("the passthrough forwarded {forwarded} of {points} points in 10 minutes");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(10)) {
            let message = message?;
            started.get_or_insert_with(Instant::now);
            if !open {
                producer.begin_transaction()?;
                open = true;
            }
            let key = message.key().unwrap_or_default();
            let payload = message.payload().unwrap_or_default();
            send(&producer, output, key, payload)?;
            forwarded += 1;
        }
        producer.poll(Duration::ZERO);
        if open && last_commit.elapsed() >= Duration::from_millis(100) {
            commit(&producer, &consumer)?;
            open = false;
            last_commit = Instant::now();
        }
    }
    if open {
        commit(&producer, &consumer)?;
    }
    // Started at the first message: the consumer's assignment is not observable here more precisely, and
    // the first poll after joining returns a message at once since the input is waiting.
    let seconds = started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    Ok(Run { seconds, points: forwarded })
}

/// Replaces the `## {title}` section of the report (to the next `## ` heading) with `body`, or appends
/// it; creates the report with its heading when missing.
fn write_section(path: &std::path::Path, title: &str, body: &str) -> anyhow::Result<()> {
    let mut report = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# Runnel benchmarks\n\nWritten by `runnel-bench` (deploy/bench.sh). Every figure is measured beside its \
         baseline in the same run, on the same broker and data; the ratios are what to compare across machines.\n"
            .to_owned()
    });
    let heading = format!("## {title}\n");
    let section = format!("{heading}\n{body}");
    if let Some(start) = report.find(&heading) {
        let rest = &report[start + heading.len()..];
        let end = rest.find("\n## ").map_or(report.len(), |i| start + heading.len() + i + 1);
        report.replace_range(start..end, &section);
    } else {
        if !report.ends_with("\n\n") {
            report.push('\n');
        }
        report.push_str(&section);
    }
    std::fs::write(path, report)?;
    Ok(())
}

/// `NAME=VALUE`, a service setting as an environment variable.
fn service_env(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if name.starts_with("RUNNEL_") => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{arg:?} is not RUNNEL_<SERVICE>__<KEY>=<value>")),
    }
}
