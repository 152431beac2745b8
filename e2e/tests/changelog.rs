//! The processor's windows live in its changelog, not in its input: a processor stops with tumbling and
//! session windows open, every point it read is then deleted from the points topic, and a new processor
//! in the same group still closes those windows with exactly the statistics of all their points,
//! computed here directly. It reads none of the first points again, and a point that joins two restored
//! sessions merges them.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::{S, Topics, WINDOW, series};
use e2e::services::processor_settings;
use e2e::{Running, eventually, kafka, now_ns, read_committed, unique};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Point};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const SERIES: i64 = 20;
const GAP: i64 = 3 * S;

/// The points of phase 1 (windows left open) and phase 2 (the rest, then a point per series at 60 s
/// that closes every window before it), for 20 tumbling series `tumble` and 20 session series `sess`.
fn phases(base: i64) -> (Vec<Point>, Vec<Point>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for i in 0..SERIES {
        let host = i.to_string();
        let tumble = series("tumble", &[("host", &host)]);
        let sess = series("sess", &[("host", &host)]);
        let value = |t: i64| (i * 100 + t) as f64;
        // Tumbling: one point a second; up to 9 s in phase 1, so [0, 10) is open when it stops.
        for t in 0..20 {
            let phase = if t < 10 { &mut first } else { &mut second };
            phase.push(e2e::oracle::point(&tumble, base + t * S, value(t)));
        }
        // Sessions (gap 3 s): [0, 5) and [6, 10) in phase 1; 4.5 s in phase 2 joins them, and 20 s and
        // 21 s open a third.
        for (half_seconds, phase) in [(0, 1), (2, 1), (4, 1), (12, 1), (14, 1), (9, 2), (40, 2), (42, 2)] {
            let ts = base + half_seconds * S / 2;
            let point = e2e::oracle::point(&sess, ts, value(half_seconds) + 0.5);
            if phase == 1 { first.push(point) } else { second.push(point) }
        }
    }
    for i in 0..SERIES {
        let host = i.to_string();
        for metric in ["tumble", "sess"] {
            second.push(e2e::oracle::point(&series(metric, &[("host", &host)]), base + 60 * S, 0.0));
        }
    }
    // In time order across series, as a fleet sends them: nothing is late.
    first.sort_by_key(|p| p.timestamp_ns);
    second.sort_by_key(|p| p.timestamp_ns);
    (first, second)
}

/// (series key, start) → (end, count, sum, min, max) of every window that ends by 55 s: tumbling
/// windows by grouping on the 10 s bucket, sessions by sorting each series' points and cutting where
/// neighbours are a gap apart or more.
/// (end, count, sum, min, max) of a window.
type Stats = (i64, u64, f64, f64, f64);

fn oracle(points: &[Point], base: i64) -> BTreeMap<(String, i64), Stats> {
    let mut by_series: BTreeMap<String, Vec<&Point>> = BTreeMap::new();
    for p in points {
        by_series.entry(p.series_key()).or_default().push(p);
    }
    let mut windows = BTreeMap::new();
    let mut add = |key: &str, start: i64, end: i64, p: &Point| {
        let w = windows.entry((key.to_owned(), start)).or_insert((end, 0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
        w.0 = w.0.max(end);
        w.1 += 1;
        w.2 += p.value;
        w.3 = w.3.min(p.value);
        w.4 = w.4.max(p.value);
    };
    for (key, mut points) in by_series {
        points.sort_by_key(|p| p.timestamp_ns);
        if key.starts_with("sess") {
            let mut current: Option<(i64, i64)> = None;
            for p in points {
                let (start, _) = match current {
                    Some((start, end)) if p.timestamp_ns < end => (start, end),
                    _ => (p.timestamp_ns, 0),
                };
                current = Some((start, p.timestamp_ns + GAP));
                add(&key, start, p.timestamp_ns + GAP, p);
            }
        } else {
            for p in points {
                let start = p.timestamp_ns.div_euclid(WINDOW) * WINDOW;
                add(&key, start, start + WINDOW, p);
            }
        }
    }
    windows.retain(|_, w| w.0 <= base + 55 * S);
    windows
}

async fn produce(points: &[Point], topic: &str) {
    let producer: FutureProducer = kafka().producer("e2e-changelog").create().unwrap();
    let sends = points.iter().map(|p| {
        let (key, payload) = (p.series_key(), p.encode_to_vec());
        let producer = producer.clone();
        async move { producer.send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(30)).await.map(drop).map_err(|(e, _)| e) }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
}

async fn start(topics: &Topics, group: &str) -> (Arc<processor::Stats>, Running<processor::Error>) {
    let mut settings = processor_settings(topics, group);
    settings.windows.rules = vec![processor::WindowRule {
        metric: "sess".into(),
        window: processor::WindowDef::Session { gap: Duration::from_nanos(GAP as u64) },
    }];
    // Only event time closes windows here.
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(settings).await.expect("processor starts");
    let stats = app.stats();
    (stats, Running::spawn(|shutdown| app.run(shutdown)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_survive_the_loss_of_the_input_they_were_built_from() {
    let topics = Topics::unique(2);
    let group = unique("e2e-changelog");
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let (first, second) = phases(base);

    let (stats, running) = start(&topics, &group).await;
    produce(&first, &topics.points.name).await;
    let sent = first.len() as u64;
    eventually("the first processor to read phase 1", Duration::from_secs(60), || {
        let read = stats.points.load(Ordering::SeqCst);
        async move { (read == sent).then_some(()) }
    })
    .await;
    running.stop().await;
    assert_eq!(stats.windows_emitted.load(Ordering::SeqCst), 0, "every window is still open");
    assert!(stats.changelog_records.load(Ordering::SeqCst) >= 3 * SERIES as u64, "each open window was checkpointed");

    // Delete every point read so far: only the changelog still knows them.
    let admin: AdminClient<DefaultClientContext> = kafka().producer("e2e-admin").create().unwrap();
    let mut upto = TopicPartitionList::new();
    for partition in 0..topics.points.partitions {
        upto.add_partition_offset(&topics.points.name, partition, Offset::End).unwrap();
    }
    let deleted = admin.delete_records(&upto, &AdminOptions::new()).await.unwrap();
    for elem in deleted.elements() {
        elem.error().unwrap();
    }
    assert_eq!(e2e::message_count(&kafka(), &topics.points.name), 0, "the points topic is empty");

    let (stats, running) = start(&topics, &group).await;
    produce(&second, &topics.points.name).await;
    let want = oracle(&[first.clone(), second.clone()].concat(), base);
    assert_eq!(want.len(), 4 * SERIES as usize, "two tumbling windows and two sessions per series");
    let wanted = want.len();
    let records = eventually("every window to close", Duration::from_secs(60), || {
        let records = read_committed(&kafka(), &topics.aggregates.name, wanted, Duration::from_secs(2));
        async move { (records.len() >= wanted).then_some(records) }
    })
    .await;
    // Anything beyond: a window emitted twice, or one that should not have closed.
    let extra = read_committed(&kafka(), &topics.aggregates.name, want.len() + 1, Duration::from_secs(3));
    assert_eq!(extra.len(), want.len(), "no window twice, none that should still be open");
    let mut got = BTreeMap::new();
    for record in &records {
        let aggregate = Aggregate::decode(record.payload.as_slice()).unwrap();
        let (key, w) = (aggregate.series.unwrap().key(), aggregate.window.unwrap());
        got.insert((key, w.start_ns), (w.end_ns, w.count, w.sum, w.min, w.max));
    }
    assert_eq!(got, want);
    assert_eq!(stats.points.load(Ordering::SeqCst), second.len() as u64, "no point of phase 1 read again");
    assert!(stats.restored_windows.load(Ordering::SeqCst) >= 3 * SERIES as u64);
    running.stop().await;
}
