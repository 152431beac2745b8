//! Watermarks that never stall and never lie: each partition has its own, so a quiet partition holds no
//! other back; and when a partition's input goes quiet, its event time follows the wall clock after the
//! idle timeout, so its windows still close, also after it moved to another processor.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::time::Duration;

use e2e::oracle::{S, Topics, WINDOW, point, series};
use e2e::{Record, eventually, kafka, now_ns, read_committed, unique};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Point};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Sends `points` to `partition` of `topic`, in order.
async fn produce(topic: &str, partition: i32, points: &[Point]) {
    let producer: FutureProducer = kafka().producer("e2e-watermarks").create().unwrap();
    for p in points {
        let (key, payload) = (p.series_key(), p.encode_to_vec());
        let record = FutureRecord::to(topic).partition(partition).key(&key).payload(&payload);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
}

fn aggregates(records: &[Record]) -> Vec<Aggregate> {
    records.iter().map(|r| Aggregate::decode(r.payload.as_slice()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_does_not_hold_back_the_others() {
    let topics = Topics::unique(2);
    let mut settings = e2e::services::processor_settings(&topics, &unique("e2e-held"));
    // No wall-clock help: only event time closes windows here.
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(settings).await.unwrap();
    let processor = e2e::Running::spawn(|shutdown| app.run(shutdown));

    // Partition 0 gets one point and nothing more; partition 1 flows for 30 s of event time.
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let (quiet, busy) = (series("held", &[("p", "0")]), series("held", &[("p", "1")]));
    produce(&topics.points.name, 0, &[point(&quiet, base, 7.0)]).await;
    let flowing: Vec<Point> = (0..=30).map(|t| point(&busy, base + t * S, t as f64)).collect();
    produce(&topics.points.name, 1, &flowing).await;

    // Partition 1's watermark reaches 25 s: its windows [0, 10) and [10, 20) close, whatever partition 0
    // does. Partition 0's window stays open: nothing moved its own watermark.
    let records = read_committed(&kafka(), &topics.aggregates.name, 2, Duration::from_secs(60));
    let extra = read_committed(&kafka(), &topics.aggregates.name, 3, Duration::from_secs(3));
    assert_eq!(extra.len(), 2, "partition 0's window is still open");
    let got: Vec<(String, i64, u64, f64)> = aggregates(&records)
        .into_iter()
        .map(|a| {
            let w = a.window.unwrap();
            (a.series.unwrap().key(), w.start_ns - base, w.count, w.sum)
        })
        .collect();
    let want = vec![(busy.key(), 0, 10, 45.0), (busy.key(), 10 * S, 10, 145.0)];
    assert_eq!(got, want);
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_closes_its_windows_after_the_idle_timeout() {
    let topics = Topics::unique(1);
    let mut settings = e2e::services::processor_settings(&topics, &unique("e2e-quiet"));
    settings.windows.idle_timeout = Duration::from_millis(500);
    settings.windows.default = processor::WindowDef::Tumbling { size: Duration::from_secs(1) };
    settings.windows.allowed_lateness = Duration::ZERO;
    let app = processor::App::build(settings).await.unwrap();
    let stats = app.stats();
    let processor = e2e::Running::spawn(|shutdown| app.run(shutdown));

    // Three points in one window, then silence: no later point will ever move the watermark.
    let m = series("quiet", &[]);
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let points: Vec<Point> = (0..3).map(|i| point(&m, base + i * S / 5, i as f64)).collect();
    produce(&topics.points.name, 0, &points).await;
    let windows = aggregates(&read_committed(&kafka(), &topics.aggregates.name, 1, Duration::from_secs(60)));
    assert_eq!(windows.len(), 1, "the window closed without further input");
    let w = windows[0].window.clone().unwrap();
    assert_eq!((w.start_ns, w.count, w.sum, w.min, w.max), (base, 3, 3.0, 0.0, 2.0));
    eventually("the idle advance to be counted", Duration::from_secs(5), || {
        let advanced = stats.idle_advances.load(std::sync::atomic::Ordering::SeqCst);
        async move { (advanced == 1).then_some(()) }
    })
    .await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_taken_over_still_closes_its_windows() {
    let topics = Topics::unique(1);
    let group = unique("e2e-quiet-moved");
    let settings = |idle_timeout: Duration| {
        let mut s = e2e::services::processor_settings(&topics, &group);
        s.windows.idle_timeout = idle_timeout;
        s
    };
    // The first owner reads the points, keeps the window open (no idle advance), and stops.
    let app = processor::App::build(settings(Duration::from_secs(3600))).await.unwrap();
    let stats = app.stats();
    let first = e2e::Running::spawn(|shutdown| app.run(shutdown));
    let m = series("moved", &[]);
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let points: Vec<Point> = (0..3).map(|i| point(&m, base + i * S, i as f64)).collect();
    produce(&topics.points.name, 0, &points).await;
    eventually("the first owner to read the points", Duration::from_secs(60), || {
        let read = stats.points.load(std::sync::atomic::Ordering::SeqCst);
        async move { (read == 3).then_some(()) }
    })
    .await;
    first.stop().await;

    // The next owner restores the window and sees no point at all: the idle advance must close it.
    let app = processor::App::build(settings(Duration::from_millis(500))).await.unwrap();
    let stats = app.stats();
    let second = e2e::Running::spawn(|shutdown| app.run(shutdown));
    let windows = aggregates(&read_committed(&kafka(), &topics.aggregates.name, 1, Duration::from_secs(60)));
    assert_eq!(windows.len(), 1, "the restored window closed without further input");
    let w = windows[0].window.clone().unwrap();
    assert_eq!((w.start_ns, w.count, w.sum), (base, 3, 3.0));
    assert_eq!(stats.points.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing read again");
    assert_eq!(stats.restored_windows.load(std::sync::atomic::Ordering::SeqCst), 1);
    second.stop().await;
}
