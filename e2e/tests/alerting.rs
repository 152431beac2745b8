//! Alert semantics on a real broker: a flapping series fires once with flap damping on, a series that
//! stops reporting follows its no-data policy, and a backtest of the aggregates read back from the topic
//! produces exactly the alert changes the live analyzer published.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::{Running, eventually, kafka, read_committed};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Alert, AlertState, Series, WindowStats};
use rdkafka::producer::{FutureProducer, FutureRecord};

const S: i64 = 1_000_000_000;

const RULES: &str = r#"
[[rules]]
name = "damped"
metric = "temp"
op = ">"
threshold = 30.0
keep_firing_for = "30s"

[[rules]]
name = "watched"
metric = "temp"
tags = { host = "quiet" }
op = ">"
threshold = 30.0
no_data = "alert"
no_data_after = "30s"
"#;

fn window(host: &str, i: i64, mean: f64) -> Aggregate {
    let series = Series { metric: "temp".into(), tags: [("host".to_owned(), host.to_owned())].into() };
    let stats = WindowStats { start_ns: i * 10 * S, end_ns: (i + 1) * 10 * S, count: 1, sum: mean, mean, min: mean, max: mean, ..Default::default() };
    Aggregate { series: Some(series), window: Some(stats) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damping_no_data_and_a_backtest_equal_to_the_live_alerts() {
    let (s, file) = e2e::analyzer_settings(RULES);
    let (aggregates, alerts) = (s.topics.aggregates.name.clone(), s.topics.alerts.name.clone());
    let (model, rules) = (s.model.clone(), analyzer::reload::load(&s.rules, &file).unwrap());
    let app = analyzer::App::build(s).await.expect("analyzer starts");
    let stats = app.stats();
    let analyzer = Running::spawn(|shutdown| app.run(shutdown));

    // "flappy" crosses 30 every window for 20 windows, then stays below; "quiet" is hot for three
    // windows and then silent while "flappy" moves event time on.
    let mut sent = Vec::new();
    for i in 0..23 {
        sent.push(window("flappy", i, if i < 20 && i % 2 == 0 { 40.0 } else { 20.0 }));
        if i < 3 {
            sent.push(window("quiet", i, 40.0));
        }
    }
    let producer: FutureProducer = kafka().producer("e2e-alerting").create().unwrap();
    for aggregate in &sent {
        let key = aggregate.series.as_ref().unwrap().key();
        producer.send(FutureRecord::to(&aggregates).key(&key).payload(&aggregate.encode_to_vec()), Duration::from_secs(10)).await.unwrap();
    }
    let count = sent.len() as u64;
    eventually("the analyzer to read every aggregate", Duration::from_secs(30), || {
        let read = stats.aggregates.load(Ordering::SeqCst);
        async move { (read >= count).then_some(()) }
    })
    .await;
    let published = stats.alerts.load(Ordering::SeqCst) as usize;
    analyzer.stop().await;
    let live: Vec<Alert> =
        read_committed(&kafka(), &alerts, published, Duration::from_secs(30)).iter().map(|r| Alert::decode(r.payload.as_slice()).unwrap()).collect();
    assert_eq!(live.len(), published);
    let changes: Vec<(String, i64, AlertState)> = live.iter().map(|a| (a.id.clone(), a.window_end_ns / (10 * S) - 1, a.state())).collect();

    // Damped: fires once at window 0 and resolves when three windows (30 s) in a row were clear.
    let damped = |host: &str| changes.iter().filter(|(id, ..)| *id == format!("damped/temp{{host=\"{host}\"}}")).map(|(_, w, s)| (*w, *s)).collect::<Vec<_>>();
    assert_eq!(damped("flappy"), [(0, AlertState::Firing), (21, AlertState::Resolved)]);
    // No data: "quiet" fired at window 0; its last window ends at 30 s, so flappy's window 5 (ending at
    // 60 s) reveals 30 s of silence.
    let watched: Vec<(i64, AlertState)> = changes.iter().filter(|(id, ..)| id.starts_with("watched/")).map(|(_, w, s)| (*w, *s)).collect();
    assert_eq!(watched, [(0, AlertState::Firing), (5, AlertState::NoData)]);
    // The damped rule holds "quiet" firing through its silence (keep policy: no false "resolved").
    assert_eq!(damped("quiet"), [(0, AlertState::Firing)]);

    // A backtest of the aggregates as the topic holds them gives exactly the live changes.
    let recorded: Vec<(i32, Aggregate)> = read_committed(&kafka(), &aggregates, sent.len(), Duration::from_secs(30))
        .into_iter()
        .map(|r| (r.partition, Aggregate::decode(r.payload.as_slice()).unwrap()))
        .collect();
    assert_eq!(recorded.len(), sent.len());
    let backtest = analyzer::backtest::run(model, rules, recorded);
    assert_eq!(backtest.alerts, live);
}
