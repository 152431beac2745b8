//! The analyzer's benchmark: the cost of one model update, aggregates per second per core through a
//! running analyzer beside a bare consumer of the same topic, resident memory per series, and the
//! quality of its anomaly detectors on NAB's labelled streams, scored as NAB scores.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use analyzer::model::DetectorSpec;
use analyzer::nab::{DataFile, Profile};
use analyzer::rules::{Comparison, Rule};
use anyhow::{Context as _, bail};
use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::v1::{Aggregate, Series, WindowStats};

use crate::store::{Run, cpu_seconds, drain, load, median};
use crate::unique;

pub(crate) struct Options {
    /// Series counts at which one update's cost and the memory per series are measured.
    pub(crate) scales: Vec<u64>,
    /// Aggregates through the analyzer (over `aggregates / 100` series).
    pub(crate) aggregates: u64,
    pub(crate) partitions: i32,
    pub(crate) rounds: u32,
    /// NAB's sample (`../shared/data/nab`); the quality part is left out when it is absent.
    pub(crate) nab: PathBuf,
}

pub(crate) async fn analyzer_bench(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    let mut out = format!("{}\n\n", crate::machine());
    out.push_str(&updates(&o.scales));
    out.push_str(&through_kafka(kafka, o).await?);
    if o.nab.join("labels.json").exists() {
        out.push_str(&quality(&o.nab)?);
    } else {
        out.push_str(&format!("### Quality on NAB\n\nNot measured: {} is absent.\n\n", o.nab.display()));
    }
    Ok(out)
}

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// The settings every measured analysis runs with: the defaults (both trend models, the EWMA
/// detector, the latest 60 scores) and one threshold rule on the measured metric.
fn settings() -> analyzer::Settings {
    analyzer::Settings { rules: vec![Rule::threshold("high", "bench", Comparison::Above, 1e9)], ..analyzer::Settings::default() }
}

/// Nanoseconds per `Analysis::observe` and resident bytes per series, at each scale, once every series
/// has seen enough windows to fill its models (the regression's 30 windows, the latest 60 scores).
fn updates(scales: &[u64]) -> String {
    const WINDOWS: i64 = 60;
    let mut rows = String::new();
    for &scale in scales {
        let before = resident_bytes();
        let mut analysis = analyzer::state::Analysis::new(settings().model, settings().rules);
        let mut aggregates: Vec<Aggregate> = (0..scale)
            .map(|i| Aggregate {
                series: Some(Series { metric: "bench".to_owned(), tags: [("host".to_owned(), format!("host-{i}"))].into() }),
                window: Some(WindowStats { count: 1, ..WindowStats::default() }),
            })
            .collect();
        let input = resident_bytes().saturating_sub(before);
        let mut seconds = 0.0;
        for w in 0..WINDOWS {
            for (i, aggregate) in aggregates.iter_mut().enumerate() {
                if let Some(window) = aggregate.window.as_mut() {
                    window.start_ns = w * 10_000_000_000;
                    window.end_ns = window.start_ns + 10_000_000_000;
                    window.mean = (i as i64 % 100 + w % 7) as f64;
                }
            }
            let started = Instant::now();
            for aggregate in &aggregates {
                std::hint::black_box(analysis.observe(0, aggregate));
            }
            seconds += started.elapsed().as_secs_f64();
        }
        let held = resident_bytes().saturating_sub(before).saturating_sub(input);
        let updates = scale as f64 * WINDOWS as f64;
        rows.push_str(&format!(
            "| {scale} | {:.0} | {:.0} | {:.0} |\n",
            seconds / updates * 1e9,
            updates / seconds,
            held as f64 / scale as f64
        ));
        eprintln!("{scale} series: {:.0} ns per update", seconds / updates * 1e9);
        drop(analysis);
    }
    format!(
        "### Model updates and memory\n\nIn process, no Kafka: {WINDOWS} windows for each series, every series \
         window by window, through `Analysis::observe` with the default models (least squares over 30 windows, \
         Holt, the EWMA detector, the latest 60 scores kept) and one threshold rule. Memory is the growth of the \
         process's resident set over the input, divided by the series.\n\n\
         | series | ns per update | updates/s (one core) | resident bytes per series |\n|---|---|---|---|\n{rows}\n"
    )
}

/// A running analyzer draining the aggregates topic, beside a bare consumer of the same topic.
async fn through_kafka(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    let topic = TopicSettings { name: unique("bench-analyzer"), partitions: o.partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&topic]).await?;
    let per_series = 100;
    let series = (o.aggregates / per_series).max(1);
    let loaded = {
        let (kafka, name) = (kafka.clone(), topic.name.clone());
        tokio::task::spawn_blocking(move || load(&kafka, &name, series, per_series)).await??
    };
    eprintln!("loaded {loaded} aggregates");
    let (mut bare, mut analyzed) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let run = {
            let (kafka, name) = (kafka.clone(), topic.name.clone());
            tokio::task::spawn_blocking(move || drain(&kafka, &name, loaded)).await??
        };
        eprintln!("round {round}: bare consumer {:.0} aggregates/s", run.rate());
        bare.push(run);
        let run = run_analyzer(kafka, &topic, loaded).await?;
        eprintln!("round {round}: analyzer {:.0} aggregates/s", run.rate());
        analyzed.push(run);
    }
    let b = median(bare.iter().map(Run::rate).collect());
    let a = median(analyzed.iter().map(Run::rate).collect());
    let per_core = median(analyzed.iter().map(|r| r.records as f64 / r.cpu).collect());
    let bare_per_core = median(bare.iter().map(|r| r.records as f64 / r.cpu).collect());
    let all = |runs: &[Run]| runs.iter().map(|r| format!("{:.0}", r.rate())).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "### Aggregates through the analyzer\n\n{loaded} aggregates ({series} series × {per_series} windows, as the \
         processor emits them), {} partitions. Each round a bare rdkafka consumer (fresh group) drains the topic, then \
         an analyzer (fresh group, default settings and one rule; exactly once, so every 1 s commit also writes the checkpoints of the series that changed) consumes it, timed from the start to the last \
         aggregate folded into the models. Per core: aggregates per CPU second of the process (user and system). \
         Median of {} rounds.\n\n\
         | run | aggregates/s (median) | every round | ratio | aggregates per CPU second |\n|---|---|---|---|---|\n\
         | bare rdkafka consumer (baseline) | {b:.0} | {} | 1.00 | {bare_per_core:.0} |\n\
         | analyzer | {a:.0} | {} | {:.2} | {per_core:.0} |\n\n",
        o.partitions,
        o.rounds,
        all(&bare),
        all(&analyzed),
        a / b,
    ))
}

// Settings read better assigned one by one.
#[allow(clippy::field_reassign_with_default)]
async fn run_analyzer(kafka: &KafkaSettings, topic: &TopicSettings, records: u64) -> anyhow::Result<Run> {
    let mut s = settings();
    s.kafka = kafka.clone();
    s.grpc.listen = "127.0.0.1:0".parse()?;
    s.ops.listen = "127.0.0.1:0".parse()?;
    s.group_id = unique("bench-analyzer");
    s.topics.aggregates = topic.clone();
    s.topics.alerts = TopicSettings::new(&unique("bench-alerts"));
    s.topics.changelog = TopicSettings::new(&unique("bench-analyzer-changelog"));
    let app = analyzer::App::build(s).await?;
    let stats = app.stats();
    let shutdown = plumbing::Shutdown::new();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let task = tokio::spawn(app.run(shutdown.clone()));
    while stats.read.load(Ordering::Relaxed) < records {
        if started.elapsed() > Duration::from_secs(600) || task.is_finished() {
            bail!("the analyzer read {} of {records} aggregates", stats.read.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    shutdown.cancel();
    task.await??;
    Ok(Run { seconds, records, cpu })
}

/// A detector measured on NAB: a name, and the detector (none: a baseline that scores without one).
struct Candidate {
    name: &'static str,
    detector: Option<DetectorSpec>,
}

/// One NAB file: its rows, and its labelled windows as row numbers (the first row at or after a
/// window's start, the last at or before its end). The scorer sees row numbers rather than times: one
/// NAB file (machine_temperature_system_failure) has a row whose time goes back an hour, which NAB's
/// own scorer takes in file order.
struct NabFile {
    rows: Vec<analyzer::backtest::Row>,
    timestamps: Vec<i64>,
    windows: Vec<(i64, i64)>,
}

fn nab_time(text: &str) -> anyhow::Result<i64> {
    let at = humantime::parse_rfc3339_weak(text).with_context(|| format!("label time {text:?}"))?;
    Ok(i64::try_from(at.duration_since(std::time::UNIX_EPOCH)?.as_nanos())?)
}

fn nab_files(dir: &Path) -> anyhow::Result<Vec<(String, NabFile)>> {
    let labels: std::collections::BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("labels.json"))?).context("labels.json")?;
    let series = Series { metric: "value".to_owned(), tags: Default::default() };
    let mut files = Vec::new();
    for (name, windows) in labels {
        let path = dir.join("data").join(&name);
        let file = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
        let rows = analyzer::backtest::read_csv(std::io::BufReader::new(file), &series, None).with_context(|| path.display().to_string())?;
        let times: Vec<i64> = rows.iter().map(|r| r.window.window.as_ref().map_or(0, |w| w.start_ns)).collect();
        let mut rowed = Vec::new();
        for (start, end) in windows {
            let (start, end) = (nab_time(&start)?, nab_time(&end)?);
            let first = times.iter().position(|t| *t >= start);
            let last = times.iter().rposition(|t| *t <= end);
            let (Some(first), Some(last)) = (first, last) else { bail!("{name}: window {start}..{end} holds no row") };
            rowed.push((first as i64, last as i64));
        }
        let timestamps = (0..rows.len() as i64).collect();
        files.push((name, NabFile { rows, timestamps, windows: rowed }));
    }
    Ok(files)
}

/// Scores per row: the detector's through a backtest, or a seeded uniform draw for the random
/// baseline (splitmix64), or 0 for the null one.
fn scores(candidate: &Candidate, file: &NabFile, seed: u64) -> Vec<f64> {
    match (&candidate.detector, candidate.name) {
        (Some(spec), _) => {
            let mut model = analyzer::Settings::default().model;
            model.detector = spec.clone();
            let outcome = analyzer::backtest::run(model, Vec::new(), file.rows.iter().map(|r| (0, r.window.clone())));
            outcome.scores.iter().map(|s| s.map_or(0.0, |s| s.score)).collect()
        }
        (None, "random") => {
            let mut state = seed;
            (0..file.rows.len())
                .map(|_| {
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    (z ^ (z >> 31)) as f64 / u64::MAX as f64
                })
                .collect()
        }
        (None, _) => vec![0.0; file.rows.len()],
    }
}

fn quality(dir: &Path) -> anyhow::Result<String> {
    let files = nab_files(dir)?;
    let day = Duration::from_secs(86_400);
    let candidates = [
        Candidate { name: "null (never detects)", detector: None },
        Candidate { name: "random", detector: None },
        Candidate { name: "ewma α 0.1, warmup 10", detector: Some(DetectorSpec::Ewma { alpha: 0.1, warmup: 10 }) },
        Candidate { name: "ewma α 0.05, warmup 20", detector: Some(DetectorSpec::Ewma { alpha: 0.05, warmup: 20 }) },
        Candidate { name: "ewma α 0.02, warmup 50 (the default)", detector: Some(DetectorSpec::default()) },
        Candidate { name: "mad over 60 windows", detector: Some(DetectorSpec::Mad { windows: 60, warmup: 30 }) },
        Candidate { name: "mad over 288 windows", detector: Some(DetectorSpec::Mad { windows: 288, warmup: 60 }) },
        Candidate {
            name: "seasonal, 1 day in 24 slots, α 0.3",
            detector: Some(DetectorSpec::Seasonal { period: day, slots: 24, alpha: 0.3, warmup: 2 }),
        },
    ];
    let mut rows = String::new();
    for candidate in &candidates {
        let scored: Vec<Vec<f64>> = files.iter().enumerate().map(|(i, (_, f))| scores(candidate, f, 42 + i as u64)).collect();
        let corpus: Vec<DataFile<'_>> = files
            .iter()
            .zip(&scored)
            .map(|((_, f), scores)| DataFile { timestamps: &f.timestamps, windows: &f.windows, scores })
            .collect();
        let result = analyzer::nab::benchmark(&corpus, Profile::STANDARD)?;
        eprintln!("{}: {:.1}", candidate.name, result.normalised);
        rows.push_str(&format!(
            "| {} | {:.1} | {:.4} | {} | {} | {} |\n",
            candidate.name,
            result.normalised,
            result.best.threshold,
            result.best.windows_detected,
            result.best.windows_missed,
            result.best.false_positives
        ));
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    Ok(format!(
        "### Quality on NAB\n\nThe detectors run over NAB's sample ({} files: {}) through `analyzer::backtest`, the path \
         `runnel backtest --scores` takes (one window per row, the first row's gap as the window), and are scored as \
         NAB scores (`analyzer::nab`: standard profile, TP 1.0, FN 1.0, FP 0.11; probationary 15%; one threshold \
         optimised over the corpus; 0 = the null detector, 100 = perfect). For scale, NAB's published standard \
         scores on its full corpus of 58 files: Numenta HTM 70.5, Windowed Gaussian 39.6, Random 11.0, Null 0.0; \
         they are not comparable one for one with a sample of {}.\n\n\
         | detector | NAB standard score | threshold | windows detected | windows missed | false positive rows |\n\
         |---|---|---|---|---|---|\n{rows}\n",
        files.len(),
        names.join(", "),
        files.len()
    ))
}
