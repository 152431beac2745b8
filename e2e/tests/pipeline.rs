//! The whole pipeline on a real broker: points written to the collector come back from the store as
//! exactly the aggregates computed here independently, the analyzer's forecast slope and alerts match
//! an independent fit and rule simulation, the store keeps its rows across a restart, and a processor
//! that re-delivers every window adds no row.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::{HOT, S, Topics, WINDOW, assert_windows, data, expected, series};
use e2e::services::{range, start_collector, start_processor, start_store, write};
use e2e::{Running, eventually, kafka, now_ns, unique};
use futures::StreamExt as _;
use proto::v1::analyzer_service_client::AnalyzerServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use proto::prost::Message as _;
use proto::v1::dead_letter::Reason;
use proto::v1::{
    AlertState, AnomalyScoresRequest, DeadLetter, ForecastRequest, ListAlertsRequest, ListSeriesRequest, Point, Series, WatchAlertsRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_become_exact_aggregates_forecasts_and_alerts() {
    let topics = Topics::unique(3);
    let store_group = unique("e2e-store");
    let store_path = std::env::temp_dir().join(unique("runnel-e2e-store"));

    let (collector_addr, collector) = start_collector(&topics).await;
    let (processor_stats, processor) = start_processor(&topics, &unique("e2e-processor")).await;
    let (store_addr, _, store) = start_store(&topics, &store_group, &store_path).await;
    let mut als = analyzer::Settings::default();
    als.kafka = kafka();
    als.grpc.listen = "127.0.0.1:0".parse().unwrap();
    als.ops.listen = "127.0.0.1:0".parse().unwrap();
    als.group_id = unique("e2e-analyzer");
    als.topics.aggregates = topics.aggregates.clone();
    als.topics.alerts = topics.alerts.clone();
    als.topics.changelog = e2e::topic("e2e-analyzer-changelog", 1);
    als.model.windows = 10;
    als.rules = vec![analyzer::rules::Rule::threshold("hot", "temp", analyzer::rules::Comparison::Above, HOT)];
    let analyzer_app = analyzer::App::build(als).await.expect("analyzer starts");
    let analyzer_addr = analyzer_app.grpc_addr();
    let analyzer = Running::spawn(|shutdown| analyzer_app.run(shutdown));

    let mut analyzer_client = AnalyzerServiceClient::connect(format!("http://{analyzer_addr}")).await.unwrap();
    let mut watch = analyzer_client.watch_alerts(WatchAlertsRequest::default()).await.unwrap().into_inner();

    // Write: an hour ago, aligned to the window size.
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let (a, b, c) = (
        series("temp", &[("host", "a")]),
        series("temp", &[("host", "b")]),
        series("load", &[("host", "a"), ("dc", "x")]),
    );
    let data = data(base, &a, &b, &c);
    write(collector_addr, &data.sent).await;

    // Exact aggregates through QueryService.Range.
    let want = expected(base, &data);
    let want_temp: BTreeMap<_, _> = want.iter().filter(|(k, _)| k.starts_with("temp{")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(want_temp.len(), 2);
    assert!(want_temp.values().all(|w| w.len() == 5), "five closed windows per series");
    let got = eventually("the store to hold every closed window", Duration::from_secs(60), || async {
        let got = range(store_addr, "temp", base).await;
        (got.values().map(Vec::len).sum::<usize>() >= 10).then_some(got)
    })
    .await;
    assert_eq!(got.keys().collect::<Vec<_>>(), want_temp.keys().collect::<Vec<_>>());
    for (key, windows) in &want_temp {
        assert_windows(key, &got[key], windows);
    }
    let load = range(store_addr, "load", base).await;
    assert_windows(&c.key(), &load[&c.key()], &want[&c.key()]);
    assert_eq!(processor_stats.late_points.load(Ordering::SeqCst), 1, "exactly the one point beyond the lateness");

    // The late point is dead-lettered once, with its provenance: reading the points topic at the
    // recorded partition and offset gives the very point back.
    let letters = e2e::read_committed(&kafka(), &topics.deadletter.name, 2, Duration::from_secs(2));
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = DeadLetter::decode(letters[0].payload.as_slice()).unwrap();
    assert_eq!(letter.reason, Reason::Late as i32);
    assert_eq!(letter.point.as_ref(), Some(&data.late));
    assert_eq!((letter.window_start_ns, letter.window_end_ns), (base, base + WINDOW));
    assert!(letter.watermark_ns >= base + WINDOW, "{}", letter.watermark_ns);
    assert_eq!((letter.source_topic.as_str(), letter.service.as_str()), (topics.points.name.as_str(), "processor"));
    let source = e2e::read_committed(&kafka(), &topics.points.name, data.sent.len(), Duration::from_secs(10));
    let at = source
        .iter()
        .find(|r| r.partition == letter.source_partition && r.offset == letter.source_offset)
        .expect("the source offset holds a message");
    assert_eq!(Point::decode(at.payload.as_slice()).unwrap(), data.late);
    assert_eq!(letter.raw, at.payload);

    // ListSeries answers from what is stored.
    let mut query = QueryServiceClient::connect(format!("http://{store_addr}")).await.unwrap();
    let listed = query.list_series(ListSeriesRequest::default()).await.unwrap().into_inner().series;
    let listed: BTreeSet<String> = listed.iter().map(Series::key).collect();
    assert_eq!(listed, BTreeSet::from([a.key(), b.key(), c.key()]));

    // The forecast slope equals an independent least-squares fit of a's window means at their midpoints.
    let means: Vec<(f64, f64)> = want[&a.key()]
        .iter()
        .map(|w| (((w.start_ns + w.end_ns) / 2 - base) as f64 / 1e9, w.mean))
        .collect();
    let n = means.len() as f64;
    let (mx, my) = (means.iter().map(|m| m.0).sum::<f64>() / n, means.iter().map(|m| m.1).sum::<f64>() / n);
    let slope = means.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / means.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
    assert!((slope - 0.2).abs() < 1e-9, "a rises 0.2 per second: {slope}");
    let horizon = 30 * S;
    let forecast = eventually("the analyzer to fit five windows", Duration::from_secs(30), || {
        let mut client = analyzer_client.clone();
        let a = a.clone();
        async move {
            let reply = client.forecast(ForecastRequest { series: Some(a), horizon_ns: horizon, ..Default::default() }).await.ok()?.into_inner();
            (reply.windows == 5).then_some(reply)
        }
    })
    .await;
    assert!((forecast.slope_per_second - slope).abs() < 1e-9, "{} vs {slope}", forecast.slope_per_second);
    let at = base + 50 * S + horizon;
    assert_eq!(forecast.at_ns, at);
    let predicted = my + slope * ((at - base) as f64 / 1e9 - mx);
    assert!((forecast.value - predicted).abs() < 1e-9, "{} vs {predicted}", forecast.value);
    assert!(forecast.lower < forecast.value && forecast.value < forecast.upper, "{forecast:?}");
    assert_eq!(forecast.confidence, 0.95, "the default");

    // AnomalyScores: one score per window of a, in [0, 1]; bad requests name their field.
    let scores = analyzer_client
        .anomaly_scores(AnomalyScoresRequest { series: Some(a.clone()), start_ns: 0, end_ns: 0 })
        .await
        .unwrap()
        .into_inner();
    let starts: Vec<i64> = scores.scores.iter().map(|s| s.window_start_ns).collect();
    assert_eq!(starts, want[&a.key()].iter().map(|w| w.start_ns).collect::<Vec<_>>());
    assert!(scores.scores.iter().all(|s| (0.0..=1.0).contains(&s.score)) && scores.detector == "ewma");
    let refused = |status: proto::tonic::Status, field: &str| {
        assert_eq!(status.code(), proto::tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    };
    let forecast_with = |confidence: f64, model: i32| ForecastRequest { series: Some(a.clone()), horizon_ns: S, model, confidence };
    refused(analyzer_client.forecast(forecast_with(1.5, 0)).await.unwrap_err(), "confidence");
    refused(analyzer_client.forecast(forecast_with(0.9, 9)).await.unwrap_err(), "model");
    let backwards = AnomalyScoresRequest { series: Some(a.clone()), start_ns: 10, end_ns: 5 };
    refused(analyzer_client.anomaly_scores(backwards).await.unwrap_err(), "end_ns");
    refused(analyzer_client.list_alerts(ListAlertsRequest { state: 42, ..Default::default() }).await.unwrap_err(), "state");
    let nobody = AnomalyScoresRequest { series: Some(series("temp", &[("host", "nobody")])), start_ns: 0, end_ns: 0 };
    assert_eq!(analyzer_client.anomaly_scores(nobody).await.unwrap_err().code(), proto::tonic::Code::NotFound);

    // Alerts: the rule simulated on the oracle's windows, per series in window order.
    let mut want_alerts = BTreeSet::new();
    for s in [&a, &b] {
        let mut firing = false;
        for (i, w) in want[&s.key()].iter().enumerate() {
            let hot = w.mean > HOT;
            if (i == 0 && hot) || (i > 0 && hot != firing) {
                let state = if hot { AlertState::Firing } else { AlertState::Resolved };
                want_alerts.insert((format!("hot/{}", s.key()), w.start_ns, state as i32));
            }
            firing = hot;
        }
    }
    assert!(want_alerts.len() >= 2, "the data must make the rule fire: {want_alerts:?}");
    let mut got_alerts = BTreeSet::new();
    let mut events = Vec::new();
    while got_alerts.len() < want_alerts.len() {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an alert within 30 s")
            .expect("the watch stream is open")
            .expect("an alert, not an error");
        // The first event only gives the starting position.
        if let Some(alert) = &event.alert {
            got_alerts.insert((alert.id.clone(), alert.window_start_ns, alert.state));
        }
        events.push(event);
    }
    assert_eq!(got_alerts, want_alerts);
    // One message per change (read back, since transaction markers take offsets too): asking for one
    // more than expected finds none.
    let committed = e2e::read_committed(&kafka(), &topics.alerts.name, want_alerts.len() + 1, Duration::from_secs(3));
    assert_eq!(committed.len(), want_alerts.len(), "one message per change");

    // A watcher resuming from any event's token gets exactly the changes after it, none missed or
    // repeated; a token that is not one is refused, naming the field.
    for from in [0, events.len() / 2, events.len() - 1] {
        let mut resumed = analyzer_client
            .watch_alerts(WatchAlertsRequest { resume_token: events[from].resume_token.clone() })
            .await
            .unwrap()
            .into_inner();
        let first = resumed.next().await.expect("a starting position").unwrap();
        assert_eq!((first.alert, &first.resume_token), (None, &events[from].resume_token));
        for want in &events[from + 1..] {
            let got = tokio::time::timeout(Duration::from_secs(30), resumed.next()).await.expect("within 30 s").expect("open").unwrap();
            assert_eq!(&got, want, "resumed after event {from}");
        }
        let quiet = tokio::time::timeout(Duration::from_millis(500), resumed.next()).await;
        assert!(quiet.is_err(), "nothing after the last change: {quiet:?}");
    }
    let bad = analyzer_client.watch_alerts(WatchAlertsRequest { resume_token: "0:x".into() }).await.unwrap_err();
    assert_eq!(bad.code(), proto::tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("resume_token: "), "{}", bad.message());

    // ListAlerts: every alert in the state of its last change, and only those asked for.
    let mut last_state: BTreeMap<String, (i64, i32)> = BTreeMap::new();
    for (id, start, state) in &want_alerts {
        let entry = last_state.entry(id.clone()).or_insert((*start, *state));
        if *start >= entry.0 {
            *entry = (*start, *state);
        }
    }
    let listed = eventually("ListAlerts to know every alert", Duration::from_secs(30), || {
        let mut client = analyzer_client.clone();
        let want = last_state.len();
        async move {
            let alerts = client.list_alerts(ListAlertsRequest::default()).await.ok()?.into_inner().alerts;
            (alerts.len() == want).then_some(alerts)
        }
    })
    .await;
    let listed: BTreeMap<String, (i64, i32)> = listed.into_iter().map(|a| (a.id, (a.window_start_ns, a.state))).collect();
    assert_eq!(listed, last_state);
    let firing = analyzer_client
        .list_alerts(ListAlertsRequest { state: AlertState::Firing as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(firing.iter().all(|a| a.state == AlertState::Firing as i32));
    assert_eq!(firing.len(), last_state.values().filter(|(_, s)| *s == AlertState::Firing as i32).count());

    // Durability: the same aggregates after the store stops and starts again.
    store.stop().await;
    let (store_addr, restarted_stats, store) = start_store(&topics, &store_group, &store_path).await;
    let again = range(store_addr, "temp", base).await;
    assert_eq!(again, got, "the restarted store answers the same");

    // Idempotence: a second processor group re-reads every point and emits every window again; the store
    // keeps the copies (Kafka is its log) but answers each window once, from the last delivered.
    let (replay_stats, replay) = start_processor(&topics, &unique("e2e-replay")).await;
    let emitted_once = processor_stats.windows_emitted.load(Ordering::SeqCst);
    eventually("the replaying processor to emit every window again", Duration::from_secs(60), || {
        let emitted = replay_stats.windows_emitted.load(Ordering::SeqCst);
        async move { (emitted >= emitted_once).then_some(()) }
    })
    .await;
    eventually("the store to make the re-delivered windows durable", Duration::from_secs(60), || {
        let rows = restarted_stats.rows.load(Ordering::SeqCst);
        async move { (rows >= emitted_once).then_some(()) }
    })
    .await;
    assert_eq!(range(store_addr, "temp", base).await, got);

    collector.stop().await;
    replay.stop().await;
    processor.stop().await;
    store.stop().await;
    analyzer.stop().await;
    let _ = std::fs::remove_dir_all(&store_path);
}
