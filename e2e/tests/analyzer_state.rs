//! The analyzer's state survives crashes and rebalances, on a real broker with real processes: 100
//! planted threshold crossings flow while the analyzer is SIGKILLed every 20 s and restarted, or while
//! instances join and leave the group; afterwards exactly 100 alert ids went pending, fired and
//! resolved, each once, in its windows: no change repeated, none lost, no firing alert reset to pending.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::process::{Service, bin};
use e2e::{kafka, read_committed, unique};
use plumbing::kafka::TopicSettings;
use proto::prost::Message as _;
use proto::v1::{Aggregate, Alert, AlertState, Series, WindowStats};
use rdkafka::producer::{FutureProducer, FutureRecord};

const S: i64 = 1_000_000_000;
const SERIES: i64 = 100;
const WINDOWS: i64 = 40;

/// A short session timeout, so that the group notices a killed member in seconds; and a rule that
/// must hold for two windows, so that every alert passes through pending.
const SETTINGS: &str = r#"
commit_interval = "1s"

[kafka.options]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[[rules]]
name = "hot"
metric = "temp"
op = ">"
threshold = 30.0
for = "20s"
"#;

/// Series `i` is hot (40) for four windows from `crossing(i)`, and 10 otherwise.
fn crossing(i: i64) -> i64 {
    5 + i % 30
}

fn window(i: i64, w: i64) -> Aggregate {
    let series = Series { metric: "temp".into(), tags: [("host".to_owned(), format!("host-{i}"))].into() };
    let hot = (crossing(i)..crossing(i) + 4).contains(&w);
    let mean = if hot { 40.0 } else { 10.0 };
    let stats = WindowStats { start_ns: w * 10 * S, end_ns: (w + 1) * 10 * S, count: 1, sum: mean, mean, min: mean, max: mean, ..Default::default() };
    Aggregate { series: Some(series), window: Some(stats) }
}

/// Analyzer processes of one group on fresh topics.
struct Group {
    aggregates: TopicSettings,
    alerts: TopicSettings,
    config: PathBuf,
    envs: Vec<(String, String)>,
}

impl Group {
    async fn new(partitions: i32) -> Self {
        let (aggregates, alerts, changelog) = (e2e::topic("e2e-aggregates", partitions), e2e::topic("e2e-alerts", 1), unique("e2e-analyzer-changelog"));
        kafka().ensure_topics(&[&aggregates, &alerts]).await.unwrap();
        let dir = std::env::temp_dir().join(unique("runnel-analyzer-state"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("analyzer.toml");
        std::fs::write(&config, SETTINGS).unwrap();
        let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let envs = vec![
            env("KAFKA_BROKERS", &kafka().brokers),
            env("RUNNEL_ANALYZER__GROUP_ID", &unique("e2e-analyzer")),
            env("RUNNEL_ANALYZER__GRPC__LISTEN", "127.0.0.1:0"),
            env("RUNNEL_ANALYZER__TOPICS__AGGREGATES__NAME", &aggregates.name),
            env("RUNNEL_ANALYZER__TOPICS__ALERTS__NAME", &alerts.name),
            env("RUNNEL_ANALYZER__TOPICS__CHANGELOG__NAME", &changelog),
        ];
        Self { aggregates, alerts, config, envs }
    }

    /// Starts the instance `name`; its transactional id is stable across its restarts, so that a
    /// restart fences its former self's open transaction.
    fn spawn(&self, name: &str) -> Service {
        let mut envs = self.envs.clone();
        envs.push(("RUNNEL_ANALYZER__TRANSACTIONAL_ID".to_owned(), format!("{}-{name}", self.aggregates.name)));
        Service::spawn_with_args(&bin("analyzer"), &["--config", &self.config.display().to_string()], &envs)
    }

    /// Sends every series' windows, one window of all series every 1.75 s (about 70 s in all), calling
    /// `between` after each.
    async fn load(&self, mut between: impl FnMut(i64)) {
        let producer: FutureProducer = kafka().producer("e2e-analyzer-state").create().unwrap();
        let started = Instant::now();
        for w in 0..WINDOWS {
            for i in 0..SERIES {
                let aggregate = window(i, w);
                let key = aggregate.series.as_ref().unwrap().key();
                producer.send(FutureRecord::to(&self.aggregates.name).key(&key).payload(&aggregate.encode_to_vec()), Duration::from_secs(10)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1750)).await;
            between(w);
            assert!(started.elapsed() < Duration::from_secs(300), "the load took too long");
        }
    }

    /// Every alert went pending, firing, resolved, in its windows; asking for one more change than
    /// that finds none. `log` tells what the instances said, for a failure's message.
    fn check(&self, log: impl Fn() -> String) {
        let want = 3 * SERIES as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut records = Vec::new();
        while records.len() < want && Instant::now() < deadline {
            records = read_committed(&kafka(), &self.alerts.name, want, Duration::from_secs(10));
        }
        let extra = read_committed(&kafka(), &self.alerts.name, want + 1, Duration::from_secs(5));
        let mut by_id: BTreeMap<String, Vec<(AlertState, i64)>> = BTreeMap::new();
        for record in &extra {
            let alert = Alert::decode(record.payload.as_slice()).unwrap();
            by_id.entry(alert.id.clone()).or_default().push((alert.state(), alert.window_start_ns / (10 * S)));
        }
        assert_eq!(by_id.len(), SERIES as usize, "distinct alert ids; log:\n{}", log());
        for i in 0..SERIES {
            let id = format!("hot/temp{{host=\"host-{i}\"}}");
            let c = crossing(i);
            let want = vec![(AlertState::Pending, c), (AlertState::Firing, c + 1), (AlertState::Resolved, c + 4)];
            assert_eq!(by_id.get(&id), Some(&want), "{id}; log:\n{}", log());
        }
        assert_eq!(extra.len(), want, "no change published twice");
    }
}

/// How many series the instance restored from the changelog, summed over its "partition restored" lines.
fn restored_series(instance: &Service) -> usize {
    let log = std::fs::read_to_string(instance.log_path()).unwrap();
    log.lines()
        .filter(|line| line.contains("partition restored"))
        .filter_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("series=")))
        .map(|n| n.parse::<usize>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_sigkill_exactly_once() {
    let group = Group::new(3).await;
    let mut analyzer = group.spawn("a");
    let mut last_kill = Instant::now();
    let mut kills = 0;
    group
        .load(|_| {
            if last_kill.elapsed() >= Duration::from_secs(20) {
                analyzer.kill();
                kills += 1;
                analyzer = group.spawn("a");
                last_kill = Instant::now();
            }
        })
        .await;
    assert!(kills >= 3, "killed {kills} times");
    group.check(|| analyzer.log_tail(30));
    analyzer.kill();
}

/// Partitions change hands while crossings are under way: b joins a (some of a's partitions move to
/// b, which restores their series from the changelog), a leaves with SIGTERM (b takes everything), a
/// comes back (b hands some over again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_rebalances_exactly_once() {
    let group = Group::new(4).await;
    let mut a = Some(group.spawn("a"));
    let mut b = None;
    group
        .load(|w| match w {
            9 => b = Some(group.spawn("b")),
            19 => {
                let status = a.take().unwrap().terminate(Duration::from_secs(30));
                assert!(status.success(), "a exited with {status}");
            }
            29 => a = Some(group.spawn("a")),
            _ => {}
        })
        .await;
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    group.check(|| format!("a:\n{}\nb:\n{}", a.log_tail(30), b.log_tail(30)));
    // The partitions did change hands with their series: each newcomer restored some.
    for (name, instance) in [("b", &b), ("a, back", &a)] {
        assert!(restored_series(instance) > 0, "{name} restored no series; its log:\n{}", instance.log_tail(30));
    }
    for instance in [&mut a, &mut b] {
        let status = instance.terminate(Duration::from_secs(30));
        assert!(status.success(), "exited with {status}");
    }
}
