//! Definitions reloaded while a service runs, against a real broker. Alert rules: a good new file keeps
//! the alerts of its unchanged rules and adds the new ones; a bad one is refused and the running rules
//! stay. Windows: after a good new file, points go to windows of the new size while the windows open
//! before it close with the points they had; a bad one is refused and the running windows stay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::Topics;
use e2e::{Running, eventually, kafka, read_committed, unique};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Alert, AlertState, Series, WindowStats};
use rdkafka::producer::{FutureProducer, FutureRecord};

const S: i64 = 1_000_000_000;

const HOT: &str = "[[rules]]\nname = \"hot\"\nmetric = \"temp\"\nop = \">\"\nthreshold = 30.0\n";
const WARM: &str = "[[rules]]\nname = \"warm\"\nmetric = \"temp\"\nop = \">\"\nthreshold = 20.0\n";

async fn send(producer: &FutureProducer, topic: &str, window: i64, mean: f64) {
    let series = Series { metric: "temp".into(), tags: [("host".to_owned(), "a".to_owned())].into() };
    let stats = WindowStats { start_ns: window * 10 * S, end_ns: (window + 1) * 10 * S, count: 1, mean, ..Default::default() };
    let payload = Aggregate { series: Some(series.clone()), window: Some(stats) }.encode_to_vec();
    let key = series.key();
    producer.send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_unchanged_rules_and_refuses_a_bad_file() {
    let (mut s, file) = e2e::analyzer_settings(HOT);
    s.reload_interval = Duration::from_millis(100);
    let (aggregates, alerts) = (s.topics.aggregates.name.clone(), s.topics.alerts.name.clone());
    let app = analyzer::App::build(s).await.expect("analyzer starts");
    let (stats, reloads) = (app.stats(), app.reloads());
    let analyzer = Running::spawn(|shutdown| app.run(shutdown));
    let producer: FutureProducer = kafka().producer("e2e-reload").create().unwrap();
    let published = |n: u64| {
        let stats = stats.clone();
        move || {
            let seen = stats.alerts.load(Ordering::SeqCst);
            async move { (seen >= n).then_some(()) }
        }
    };

    send(&producer, &aggregates, 0, 40.0).await;
    eventually("hot to fire", Duration::from_secs(30), published(1)).await;

    // A good file: hot unchanged (still firing, so no new change), warm new (fires on the next window).
    std::fs::write(&file, format!("{WARM}{HOT}")).unwrap();
    let applied = reloads.clone();
    eventually("the reload", Duration::from_secs(30), || {
        let n = applied.applied.load(Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
    send(&producer, &aggregates, 1, 40.0).await;
    send(&producer, &aggregates, 2, 10.0).await;
    eventually("warm to fire and both to resolve", Duration::from_secs(30), published(4)).await;

    // A bad file (an unknown comparison): refused, and both rules keep running.
    std::fs::write(&file, format!("{HOT}{}", WARM.replace("\">\"", "\"~\""))).unwrap();
    let refused = reloads.clone();
    eventually("the refusal", Duration::from_secs(30), || {
        let n = refused.refused.load(Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
    send(&producer, &aggregates, 3, 40.0).await;
    eventually("both to fire again", Duration::from_secs(30), published(6)).await;
    analyzer.stop().await;

    let changes: Vec<(String, i64, AlertState)> = read_committed(&kafka(), &alerts, 6, Duration::from_secs(30))
        .into_iter()
        .map(|r| Alert::decode(r.payload.as_slice()).unwrap())
        .map(|a| (a.rule.clone(), a.window_start_ns / (10 * S), a.state()))
        .collect();
    let want = [
        ("hot", 0, AlertState::Firing),
        ("warm", 1, AlertState::Firing),
        ("warm", 2, AlertState::Resolved),
        ("hot", 2, AlertState::Resolved),
        ("warm", 3, AlertState::Firing),
        ("hot", 3, AlertState::Firing),
    ]
    .map(|(rule, window, state)| (rule.to_owned(), window, state));
    assert_eq!(changes, want);
    assert_eq!((reloads.applied.load(Ordering::SeqCst), reloads.refused.load(Ordering::SeqCst)), (1, 1));
}

/// A processor whose windows come from a file: 10 s tumbling windows, then 20 s after a reload, then a
/// bad file that changes nothing. Every closed window is checked by its bounds, count and sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_reload_applies_to_new_points_and_a_bad_file_changes_nothing() {
    let topics = Topics::unique(1);
    kafka().ensure_topics(&[&topics.points]).await.unwrap();
    let file = std::env::temp_dir().join(unique("runnel-windows")).with_extension("toml");
    std::fs::write(&file, "default = { kind = \"tumbling\", size = \"10s\" }\n").unwrap();
    let mut s = e2e::services::processor_settings(&topics, &unique("e2e-windows-reload"));
    s.windows.file = Some(file.clone());
    s.windows.reload_interval = Duration::from_millis(100);
    s.windows.allowed_lateness = Duration::ZERO;
    s.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(s).await.expect("processor starts");
    let (stats, reloads) = (app.stats(), app.reloads());
    let processor = Running::spawn(|shutdown| app.run(shutdown));
    let producer: FutureProducer = kafka().producer("e2e-windows-reload").create().unwrap();
    // 2026-01-01T00:00:00Z: a multiple of 20 s.
    let base = 1_767_225_600 * S;
    let series = Series { metric: "m".into(), tags: [("host".to_owned(), "a".to_owned())].into() };
    let send = |seconds: i64, value: f64| {
        let point = proto::v1::Point { metric: series.metric.clone(), tags: series.tags.clone(), timestamp_ns: base + seconds * S, value };
        let (producer, topic) = (producer.clone(), topics.points.name.clone());
        async move {
            let payload = point.encode_to_vec();
            let key = point.series_key();
            producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(10)).await.unwrap();
        }
    };
    let merged = |n: u64| {
        let stats = stats.clone();
        move || {
            let seen = stats.points.load(Ordering::SeqCst);
            async move { (seen >= n).then_some(()) }
        }
    };
    let counted = |applied: u64, refused: u64| {
        let reloads = reloads.clone();
        move || {
            let now = (reloads.applied.load(Ordering::SeqCst), reloads.refused.load(Ordering::SeqCst));
            async move { (now == (applied, refused)).then_some(()) }
        }
    };

    // 10 s windows: five points in [0, 10).
    for second in 1..=5 {
        send(second, second as f64).await;
    }
    eventually("five points merged", Duration::from_secs(60), merged(5)).await;
    // 20 s windows from now on: two points in [0, 20), while [0, 10) stays open with its five.
    std::fs::write(&file, "default = { kind = \"tumbling\", size = \"20s\" }\n").unwrap();
    eventually("the reload", Duration::from_secs(30), counted(1, 0)).await;
    send(11, 10.0).await;
    send(12, 20.0).await;
    eventually("seven points merged", Duration::from_secs(60), merged(7)).await;
    // A bad file (a zero size): refused, and the 20 s windows stay.
    std::fs::write(&file, "default = { kind = \"tumbling\", size = \"0s\" }\n").unwrap();
    eventually("the refusal", Duration::from_secs(30), counted(1, 1)).await;
    send(25, 7.0).await;
    // The watermark reaches 100 s: every window above closes.
    send(100, 0.0).await;
    eventually("nine points merged", Duration::from_secs(60), merged(9)).await;

    let mut closed: Vec<(i64, i64, u64, f64)> = read_committed(&kafka(), &topics.aggregates.name, 3, Duration::from_secs(60))
        .into_iter()
        .map(|r| Aggregate::decode(r.payload.as_slice()).unwrap().window.unwrap())
        .map(|w| ((w.start_ns - base) / S, (w.end_ns - base) / S, w.count, w.sum))
        .collect();
    closed.sort_by_key(|w| (w.0, w.1));
    assert_eq!(closed, [(0, 10, 5, 15.0), (0, 20, 2, 30.0), (20, 40, 1, 7.0)]);
    processor.stop().await;
    std::fs::remove_file(&file).unwrap();
}
