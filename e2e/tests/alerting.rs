//! Alert semantics on a real broker: a flapping series fires once with flap damping on, a series that
//! stops reporting follows its no-data policy, and a backtest of the aggregates read back from the topic,
//! or from the store (in the library and through `runnel backtest --from-store`), produces exactly the
//! alert changes the live analyzer published. A metric configured to be modelled per raw point is
//! learned from the points topic, point by point, and its windows are not read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::Topics;
use e2e::services::store_settings;
use e2e::{Running, eventually, kafka, read_committed, unique};
use proto::prost::Message as _;
use proto::v1::analyzer_service_client::AnalyzerServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::{Aggregate, Alert, AlertState, ForecastRequest, Series, WindowStats};
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
    let s_aggregates = s.topics.aggregates.clone();
    let (model, rules) = (s.model.clone(), analyzer::reload::load(&s.rules, &file).unwrap());
    let app = analyzer::App::build(s).await.expect("analyzer starts");
    let stats = app.stats();
    let analyzer = Running::spawn(|shutdown| app.run(shutdown));
    // A store on the same aggregates, for the backtest from the store.
    let topics = Topics { aggregates: s_aggregates.clone(), ..Topics::unique(1) };
    let path = std::env::temp_dir().join(unique("runnel-e2e-alerting-store"));
    // This test's windows are in 1970: the store keeps them rather than expire them by retention.
    let mut store_settings = store_settings(&topics, &unique("e2e-alerting-store"), &path);
    store_settings.storage.retention.aggregates = None;
    let store_app = store::App::build(store_settings).await.expect("store starts");
    let store_addr = store_app.grpc_addr();
    let store = Running::spawn(|shutdown| store_app.run(shutdown));

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
        let read = stats.read.load(Ordering::SeqCst);
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
    let backtest = analyzer::backtest::run(model.clone(), rules.clone(), recorded);
    assert_eq!(backtest.alerts, live);

    // So does one of the windows the store holds, read back in partition and offset order.
    let client = QueryServiceClient::connect(format!("http://{store_addr}")).await.unwrap();
    // Seven rows a page, so that the answer takes several pages.
    let count = sent.len();
    let stored = eventually("the store to list every aggregate", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move { store::client::aggregates(&mut client, 0, i64::MAX, 7).await.ok().filter(|l| l.len() == count) }
    })
    .await;
    let backtest = analyzer::backtest::run(model, rules, stored.into_iter().map(|l| (l.partition, l.aggregate)));
    assert_eq!(backtest.alerts, live);
    // And so does the command, from the same store.
    let output = std::process::Command::new(e2e::process::bin("runnel"))
        .args(["--store", &format!("http://{store_addr}"), "backtest", "--from-store", "--since", "1970-01-01T00:00:00Z", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "runnel backtest failed: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let printed: Vec<(String, String)> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            (words.next().unwrap().to_owned(), words.next().unwrap().to_owned())
        })
        .collect();
    let want: Vec<(String, String)> =
        live.iter().map(|a| (a.state().as_str_name().trim_start_matches("ALERT_STATE_").to_owned(), a.id.clone())).collect();
    assert_eq!(printed, want, "runnel backtest said: {stderr}");
    drop(client);
    store.stop().await;
    let _ = std::fs::remove_dir_all(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_modelled_per_point_learns_from_each_point() {
    let (mut s, _) = e2e::analyzer_settings(
        r#"
[[rules]]
name = "hot"
metric = "temp"
op = ">"
threshold = 10.0

[[rules]]
name = "busy"
metric = "cpu"
op = ">"
threshold = 10.0
"#,
    );
    s.model.points.insert("temp".to_owned(), analyzer::config::PerPoint { interval: Duration::from_secs(1) });
    let (aggregates, points, alerts) = (s.topics.aggregates.name.clone(), s.topics.points.name.clone(), s.topics.alerts.name.clone());
    let app = analyzer::App::build(s).await.expect("analyzer starts");
    let (stats, point_stats, addr) = (app.stats(), app.points_stats().expect("a loop over the points"), app.grpc_addr());
    let analyzer = Running::spawn(|shutdown| app.run(shutdown));

    // temp{host="a"} is i at i seconds, point by point; a window of temp (mean 99) must go unread, and
    // cpu is modelled per window as before.
    let temp = (0..20).map(|i| proto::v1::Point {
        metric: "temp".into(),
        tags: [("host".to_owned(), "a".to_owned())].into(),
        timestamp_ns: i * S,
        value: i as f64,
    });
    let count = tokio::task::spawn_blocking(move || e2e::produce_points(&kafka(), temp, &points, 10_000)).await.unwrap();
    let windows = [window("a", 0, 99.0), Aggregate { series: Some(Series { metric: "cpu".into(), ..Default::default() }), ..window("a", 0, 20.0) }];
    let producer: FutureProducer = kafka().producer("e2e-alerting").create().unwrap();
    for aggregate in &windows {
        let key = aggregate.series.as_ref().unwrap().key();
        producer.send(FutureRecord::to(&aggregates).key(&key).payload(&aggregate.encode_to_vec()), Duration::from_secs(10)).await.unwrap();
    }
    eventually("the analyzer to read every point and window", Duration::from_secs(30), || {
        let done = point_stats.read.load(Ordering::SeqCst) >= count && stats.read.load(Ordering::SeqCst) >= windows.len() as u64;
        async move { done.then_some(()) }
    })
    .await;
    let mut client = AnalyzerServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let series = Series { metric: "temp".into(), tags: [("host".to_owned(), "a".to_owned())].into() };
    let forecast = client.forecast(ForecastRequest { series: Some(series), horizon_ns: S, ..Default::default() }).await.unwrap().into_inner();
    let published = stats.alerts.load(Ordering::SeqCst) + point_stats.alerts.load(Ordering::SeqCst);
    analyzer.stop().await;

    // Value i at i seconds: 20 points on a line of slope 1 per second; the first point above 10 fires.
    assert_eq!(forecast.windows, 20);
    assert!((forecast.slope_per_second - 1.0).abs() < 1e-9, "{forecast:?}");
    let mut changes: Vec<(String, AlertState, i64)> = read_committed(&kafka(), &alerts, published as usize + 1, Duration::from_secs(10))
        .iter()
        .map(|r| Alert::decode(r.payload.as_slice()).unwrap())
        .map(|a| (a.id.clone(), a.state(), a.window_start_ns / S))
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [("busy/cpu{}".to_owned(), AlertState::Firing, 0), ("hot/temp{host=\"a\"}".to_owned(), AlertState::Firing, 11)]
    );
}
