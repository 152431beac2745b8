//! The analyzer's state survives SIGKILL, on a real broker with real processes: 100 planted threshold
//! crossings flow while the analyzer is killed every 20 s and restarted; afterwards exactly 100 alert
//! ids went pending, fired and resolved, each once, in its windows: no change repeated, none lost, no
//! firing alert reset to pending.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::process::{Service, bin};
use e2e::{kafka, read_committed, unique};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_sigkill_exactly_once() {
    let (aggregates, alerts, changelog) = (e2e::topic("e2e-aggregates", 3), e2e::topic("e2e-alerts", 1), unique("e2e-analyzer-changelog"));
    kafka().ensure_topics(&[&aggregates, &alerts]).await.unwrap();
    let dir = std::env::temp_dir().join(unique("runnel-analyzer-kill"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("analyzer.toml");
    std::fs::write(&config, SETTINGS).unwrap();
    let group = unique("e2e-analyzer");
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let envs = [
        env("KAFKA_BROKERS", &kafka().brokers),
        env("RUNNEL_ANALYZER__GROUP_ID", &group),
        // Stable: the restarted instance fences the killed one's open transaction.
        env("RUNNEL_ANALYZER__TRANSACTIONAL_ID", &format!("{group}-a")),
        env("RUNNEL_ANALYZER__GRPC__LISTEN", "127.0.0.1:0"),
        env("RUNNEL_ANALYZER__TOPICS__AGGREGATES__NAME", &aggregates.name),
        env("RUNNEL_ANALYZER__TOPICS__ALERTS__NAME", &alerts.name),
        env("RUNNEL_ANALYZER__TOPICS__CHANGELOG__NAME", &changelog),
    ];
    let binary = bin("analyzer");
    let config_arg = config.display().to_string();
    let spawn = || Service::spawn_with_args(&binary, &["--config", &config_arg], &envs);
    let mut analyzer = spawn();

    // The load: window by window, every series, over about 70 s.
    let producer: FutureProducer = kafka().producer("e2e-analyzer-kill").create().unwrap();
    let started = Instant::now();
    let mut last_kill = Instant::now();
    let mut kills = 0;
    for w in 0..WINDOWS {
        for i in 0..SERIES {
            let aggregate = window(i, w);
            let key = aggregate.series.as_ref().unwrap().key();
            producer.send(FutureRecord::to(&aggregates.name).key(&key).payload(&aggregate.encode_to_vec()), Duration::from_secs(10)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1750)).await;
        if last_kill.elapsed() >= Duration::from_secs(20) {
            analyzer.kill();
            kills += 1;
            analyzer = spawn();
            last_kill = Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the load took too long");
    }
    assert!(kills >= 3, "killed {kills} times");

    // Every alert: pending, firing, resolved. Asking for one more than that finds none.
    let want = 3 * SERIES as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut records = Vec::new();
    while records.len() < want && Instant::now() < deadline {
        records = read_committed(&kafka(), &alerts.name, want, Duration::from_secs(10));
    }
    let extra = read_committed(&kafka(), &alerts.name, want + 1, Duration::from_secs(5));
    let log = analyzer.log_tail(30);
    analyzer.kill();
    let mut by_id: BTreeMap<String, Vec<(AlertState, i64)>> = BTreeMap::new();
    for record in &extra {
        let alert = Alert::decode(record.payload.as_slice()).unwrap();
        by_id.entry(alert.id.clone()).or_default().push((alert.state(), alert.window_start_ns / (10 * S)));
    }
    assert_eq!(by_id.len(), SERIES as usize, "distinct alert ids; log:\n{log}");
    for i in 0..SERIES {
        let id = format!("hot/temp{{host=\"host-{i}\"}}");
        let c = crossing(i);
        let want = vec![(AlertState::Pending, c), (AlertState::Firing, c + 1), (AlertState::Resolved, c + 4)];
        assert_eq!(by_id.get(&id), Some(&want), "{id}; log:\n{log}");
    }
    assert_eq!(extra.len(), want, "no change published twice");
}
