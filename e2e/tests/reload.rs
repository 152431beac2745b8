//! Alert rules reloaded while the analyzer runs, against a real broker: a good new file keeps the
//! alerts of its unchanged rules and adds the new ones; a bad one is refused and the running rules stay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::{Running, eventually, kafka, read_committed};
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
