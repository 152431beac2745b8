//! Results are committed as soon as they exist, not at the next regular commit: with a commit interval
//! far longer than these tests wait, a window the processor closes and an alert the analyzer changes
//! still become visible to `read_committed` readers: once the input is drained, or a twentieth of
//! the interval later at the most.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::{LATENESS, S, Topics, WINDOW, point, series};
use e2e::{Running, kafka, now_ns, read_committed, unique};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Alert, AlertState, Point, Series, WindowStats};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Far longer than the tests wait: only an early commit makes their results visible in time.
const COMMIT_INTERVAL: Duration = Duration::from_secs(200);
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the tests wait for a result: past the early commit's spacing (a twentieth of the
/// interval), well short of the interval.
const PATIENCE: Duration = Duration::from_secs(60);

async fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = kafka().producer("e2e-commits").create().unwrap();
    for (key, payload) in records {
        producer.send(FutureRecord::to(topic).partition(0).key(key).payload(payload), Duration::from_secs(10)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_is_committed_before_the_next_regular_commit() {
    let topics = Topics::unique(1);
    let mut settings = e2e::services::processor_settings(&topics, &unique("e2e-commits"));
    settings.commit_interval = COMMIT_INTERVAL;
    settings.transaction_timeout = TRANSACTION_TIMEOUT;
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(settings).await.unwrap();
    let stats = app.stats();
    let processor = Running::spawn(|shutdown| app.run(shutdown));

    // Three points in the first window, then one past its end plus the lateness: the window closes.
    let m = series("prompt", &[]);
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let mut points: Vec<Point> = (0..3_i32).map(|i| point(&m, base + i64::from(i) * S, f64::from(i))).collect();
    points.push(point(&m, base + WINDOW + LATENESS, 100.0));
    let records: Vec<(String, Vec<u8>)> = points.iter().map(|p| (p.series_key(), p.encode_to_vec())).collect();
    produce(&topics.points.name, &records).await;

    let windows: Vec<Aggregate> = read_committed(&kafka(), &topics.aggregates.name, 1, PATIENCE)
        .iter()
        .map(|r| Aggregate::decode(r.payload.as_slice()).unwrap())
        .collect();
    assert_eq!(windows.len(), 1, "the closed window is committed within {PATIENCE:?}, not after {COMMIT_INTERVAL:?}");
    let w = windows[0].window.clone().unwrap();
    assert_eq!((w.start_ns, w.count, w.sum), (base, 3, 3.0));
    assert_eq!(stats.early_commits.load(Ordering::SeqCst), 1, "one window closed: one early commit");
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_change_is_committed_before_the_next_regular_commit() {
    let rules = "[[rules]]\nname = \"hot\"\nmetric = \"temp\"\nop = \">\"\nthreshold = 30.0\n";
    let (mut s, _file) = e2e::analyzer_settings(rules);
    s.commit_interval = COMMIT_INTERVAL;
    s.transaction_timeout = TRANSACTION_TIMEOUT;
    let (aggregates, alerts) = (s.topics.aggregates.name.clone(), s.topics.alerts.name.clone());
    let app = analyzer::App::build(s).await.expect("analyzer starts");
    let analyzer = Running::spawn(|shutdown| app.run(shutdown));

    let series = Series { metric: "temp".into(), tags: [("host".to_owned(), "a".to_owned())].into() };
    let window = WindowStats { start_ns: 0, end_ns: 10 * S, count: 1, sum: 40.0, mean: 40.0, min: 40.0, max: 40.0, ..Default::default() };
    let aggregate = Aggregate { series: Some(series.clone()), window: Some(window) };
    produce(&aggregates, &[(series.key(), aggregate.encode_to_vec())]).await;

    let changes: Vec<Alert> =
        read_committed(&kafka(), &alerts, 1, PATIENCE).iter().map(|r| Alert::decode(r.payload.as_slice()).unwrap()).collect();
    assert_eq!(changes.len(), 1, "the alert change is committed within {PATIENCE:?}, not after {COMMIT_INTERVAL:?}");
    assert_eq!((changes[0].rule.as_str(), changes[0].state(), changes[0].window_end_ns), ("hot", AlertState::Firing, 10 * S));
    analyzer.stop().await;
}
